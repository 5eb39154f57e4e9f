"""Mesh and sharding rules, in one place.

Two tables decide where every array lives:
* `PARAM_AXES` (here) names the logical axes of each parameter by its path, for the target and
  both drafters (and so for the optimizer state, whose leaves end in the same paths);
* the config's `sharding_rules` map logical axes to mesh axes ("data", "fsdp", "expert",
  "tensor"), e.g.
  `(("batch", ("data", "fsdp")), ("embed", "fsdp"), ("vocab", "tensor"), ...)`.
A dimension stays replicated when its logical axis has no rule, its size does not divide by the
mesh axes, or those mesh axes already split another dimension of the same array.
"""

import re
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "expert", "tensor")

Rules = Sequence[tuple[str, str | Sequence[str] | None]]

# FSDP for the weights (split "embed" over "fsdp"), Megatron-style tensor parallelism for heads,
# MLP and vocabulary, batch rows over every data-parallel axis. Expert parallelism: a MoE layer's
# experts split over "expert", which is a data-parallel axis for everything else (GShard's
# layout), FSDP-sharded like "fsdp"; XLA moves each token's activations to its experts' devices
# and back.
DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp", "expert")),
    ("embed", ("fsdp", "expert")),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("expert", "expert"),
    ("expert_mlp", "tensor"),
)

# (regex on the parameter path "a/b/c", logical axes of its trailing dimensions). Leading
# dimensions not named here (the stacked "layers" of scanned models) are never split.
PARAM_AXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"embed/embedding$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"(^|/)(q|k|v)/kernel$", ("embed", "heads")),
    (r"(^|/)o/kernel$", ("heads", "embed")),
    (r"(gate|up)/kernel$", ("embed", "mlp")),
    (r"down/kernel$", ("mlp", "embed")),
    (r"fc/kernel$", ("features", "embed")),
    (r"(gate|up)_XxDxJ$", ("expert", "embed", "expert_mlp")),
    (r"down_XxJxD$", ("expert", "expert_mlp", "embed")),
)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, expert: int = 1) -> Mesh:
  """A ("data", "fsdp", "expert", "tensor") mesh over all devices; -1 takes what the others
  leave."""
  count = jax.device_count()
  if data == -1:
    data = count // (fsdp * expert * tensor)
  if data < 1 or data * fsdp * expert * tensor != count:
    raise ValueError(f"mesh data={data} x fsdp={fsdp} x expert={expert} x tensor={tensor} does "
                     f"not match the {count} devices; set config.mesh so the product is {count}")
  # Auto axes: XLA propagates shardings through the model code, which needs no annotations.
  return jax.make_mesh((data, fsdp, expert, tensor), AXES,
                       axis_types=(AxisType.Auto,) * len(AXES))


def _mesh_axes(rules: Rules, logical: str | None) -> tuple[str, ...]:
  for name, target in rules:
    if name == logical:
      return () if target is None else (target,) if isinstance(target, str) else tuple(target)
  return ()


def logical_sharding(mesh: Mesh, rules: Rules, logical_axes: Sequence[str | None],
                     shape: Sequence[int]) -> NamedSharding:
  """The sharding of an array of `shape` whose trailing dims have `logical_axes`."""
  spec: list = [None] * len(shape)
  used: set[str] = set()
  offset = len(shape) - len(logical_axes)
  for dim, logical in enumerate(logical_axes, offset):
    axes = tuple(a for a in _mesh_axes(rules, logical) if mesh.shape[a] > 1 and a not in used)
    size = int(np.prod([mesh.shape[a] for a in axes]))
    if axes and dim >= 0 and shape[dim] % size == 0:
      spec[dim] = axes[0] if len(axes) == 1 else axes
      used.update(axes)
  return NamedSharding(mesh, PartitionSpec(*spec))


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def logical_axes_of(path: str) -> tuple[str, ...]:
  for pattern, axes in PARAM_AXES:
    if re.search(pattern, path):
      return axes
  return ()


def tree_shardings(mesh: Mesh, rules: Rules, tree):
  """Shardings for a parameter (or optimizer-state, or train-state) tree, by `PARAM_AXES`."""

  def one(path, leaf):
    shape = np.shape(leaf)
    axes = logical_axes_of(_path_str(path))
    return logical_sharding(mesh, rules, axes[-len(shape):] if shape else (), shape)

  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
  """Batch rows over the mesh axes of the "batch" rule (fsdp also splits the batch: it only
  shards the weights)."""
  axes = _mesh_axes(rules, "batch")
  return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def batch_rows_multiple(mesh: Mesh, rules: Rules) -> int:
  return int(np.prod([mesh.shape[a] for a in _mesh_axes(rules, "batch")]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def process_rows(mesh: Mesh, rules: Rules, global_rows: int) -> slice:
  """The batch rows this process's devices hold under the batch sharding: in a multi-process run
  each process reads and feeds only these (all of them in a single process)."""
  index_map = batch_sharding(mesh, rules).addressable_devices_indices_map((global_rows,))
  starts = [index[0].start or 0 for index in index_map.values()]
  stops = [global_rows if index[0].stop is None else index[0].stop for index in index_map.values()]
  rows = slice(min(starts), max(stops))
  if sum(b - a for a, b in set(zip(starts, stops))) != rows.stop - rows.start:
    raise ValueError(f"this process's batch rows are not contiguous on the mesh {mesh.shape}")
  return rows


def host_batch(mesh: Mesh, rules: Rules, local_rows: np.ndarray, global_rows: int) -> jax.Array:
  """A global batch array from this process's rows (`process_rows` of the global batch)."""
  global_shape = (global_rows, *np.shape(local_rows)[1:])
  return jax.make_array_from_process_local_data(batch_sharding(mesh, rules), np.asarray(local_rows),
                                                global_shape)

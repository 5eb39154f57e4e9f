"""Mesh and sharding rules for training: batches split over ("data", "fsdp"), drafter params and
optimizer state split over "fsdp", the frozen target replicated (or split over "tensor").

The rule for a parameter is by shape, so it covers every model here without per-layer tables:
its largest dimension divisible by the axis size is split, everything else is replicated.
"""

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over all devices; -1 takes what the others leave."""
  count = jax.device_count()
  if data == -1:
    data = count // (fsdp * tensor)
  if data * fsdp * tensor != count:
    raise ValueError(f"mesh {data}x{fsdp}x{tensor} does not use the {count} devices")
  # Auto axes: XLA propagates shardings through the model code, which needs no annotations.
  return jax.make_mesh((data, fsdp, tensor), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def split_largest_dim(mesh: Mesh, axis: str, leaf) -> NamedSharding:
  size = mesh.shape[axis]
  shape = np.shape(leaf)
  dims = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in dims:
    if size > 1 and shape[d] % size == 0:
      spec = [None] * len(shape)
      spec[d] = axis
      return NamedSharding(mesh, PartitionSpec(*spec))
  return NamedSharding(mesh, PartitionSpec())


def param_shardings(mesh: Mesh, tree, axis: str = "fsdp"):
  return jax.tree.map(lambda leaf: split_largest_dim(mesh, axis, leaf), tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows over data x fsdp (fsdp also splits the batch: it only shards the weights)."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())

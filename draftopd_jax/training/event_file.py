"""TensorBoard scalar event files, written directly: the format is small, and the usual writers
import a framework at start-up (tensorboardX imports torch: 2.3 s of every job's start on 2 CPU
cores).

A file is a sequence of records (TFRecord framing: length, masked CRC-32C of the length, data,
masked CRC-32C of the data), each an `Event` protocol buffer: the first holds the file version,
every other one a step and a `Summary` of scalar values. The few protobuf fields needed are
encoded here by hand (field numbers from TensorBoard's event.proto and summary.proto).
"""

import pathlib
import socket
import struct
import time


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # the Castagnoli polynomial, reflected
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
  """One TFRecord: the framing TensorBoard's reader checks."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _varint(value: int) -> bytes:
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, *, step: int = 0, file_version: str = "",
          scalars: dict[str, float] | None = None) -> bytes:
  """An `Event`: wall_time (1, double), step (2, int64), file_version (3, string) or summary
  (5, `Summary`: repeated value (1) = {tag (1, string), simple_value (2, float)})."""
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
  if step:
    out += _varint(2 << 3) + _varint(step)
  if file_version:
    out += _bytes_field(3, file_version.encode())
  if scalars:
    values = b"".join(_bytes_field(1, _bytes_field(1, tag.encode()) + _varint(2 << 3 | 5)
                                   + struct.pack("<f", value)) for tag, value in scalars.items())
    out += _bytes_field(5, values)
  return out


class EventFileWriter:
  """Appends scalar events to a new `events.out.tfevents.*` file in `directory`."""

  def __init__(self, directory: str | pathlib.Path):
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time()
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{time.monotonic_ns()}"
    self.file = open(directory / name, "ab")
    self.file.write(record(event(now, file_version="brain.Event:2")))

  def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
    self.file.write(record(event(time.time(), step=step, scalars=scalars)))

  def flush(self) -> None:
    self.file.flush()

  def close(self) -> None:
    self.file.close()

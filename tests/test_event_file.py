"""TensorBoard event files written without a framework, checked against tensorboardX's own
protocol buffers and record framing (an independent implementation of the same format)."""

import struct

from draftopd_jax.training import event_file
from draftopd_jax.training.metric_writer import MetricWriter


def test_crc32c_check_value():
  assert event_file.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)


def test_records_frame_as_tensorboardx_frames_them():
  from tensorboardX.crc32c import crc32c
  from tensorboardX.record_writer import masked_crc32c

  data = event_file.event(1.5, step=3, scalars={"loss": 2.0})
  assert event_file.crc32c(data) == crc32c(data)
  length = struct.pack("<Q", len(data))
  assert event_file.record(data) == (length + struct.pack("<I", masked_crc32c(length)) + data
                                     + struct.pack("<I", masked_crc32c(data)))


def read_events(path) -> list:
  from tensorboardX.proto.event_pb2 import Event

  blob, at, events = path.read_bytes(), 0, []
  while at < len(blob):
    (size,) = struct.unpack("<Q", blob[at:at + 8])
    data = blob[at + 12:at + 12 + size]
    assert struct.unpack("<I", blob[at + 12 + size:at + 16 + size])[0] == \
        event_file.masked_crc32c(data)
    events.append(Event.FromString(data))
    at += 16 + size
  return events


def test_metric_writer_logs_numbers_and_lists_as_scalars(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.write(7, {"loss": 1.25, "accuracy_by_slot": [0.5, 0.25], "note": "text", "ok": True})
  writer.write(300, {"loss": 0.75})
  writer.close()
  [path] = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
  first, *scalars = read_events(path)
  assert first.file_version == "brain.Event:2" and first.wall_time > 0
  got = [(e.step, {v.tag: v.simple_value for v in e.summary.value}) for e in scalars]
  assert got == [(7, {"loss": 1.25, "accuracy_by_slot/0": 0.5, "accuracy_by_slot/1": 0.25,
                      "ok": 1.0}), (300, {"loss": 0.75})]
  assert all(e.wall_time >= first.wall_time for e in scalars)
  assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


def test_disabled_writer_writes_nothing(tmp_path):
  writer = MetricWriter(tmp_path, enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert list(tmp_path.iterdir()) == []

"""Read rosbag2 bags as every rosbag2 release wrote them (metadata 4 to 9, mcap or sqlite3).

rosbags' folder reader (rosbags/rosbag2/reader.py, `DirectoryReader.messages`) hands out a
storage file's messages only for the topics whose offered QoS, as parsed from metadata.yaml,
equals the one parsed from the storage file (`y.ext == x.ext`). rosbag2 releases write the two
differently (an infinite deadline as `sec: 0` in one and `sec: 2147483647` in the other, a YAML
string or a list, or none at all), so no topic matches and nothing is read, silently.

Here each storage file is opened on its own with rosbags' single-file reader, whose topics are
the storage's own (sqlite3's `topics` table, mcap's channels and schemas), and joined to
metadata.yaml by topic and type. Offered QoS is advice for the player, never a filter.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path, PurePath

import yaml


class BagError(Exception):
    """A bag that cannot be read, or of which nothing can be played."""


@dataclass(frozen=True)
class OfferedQos:
    """What playback takes from a recorded publisher's offered QoS (rosbag2 v9 spelling)."""

    reliability: str  # 'reliable', 'best_effort', 'system_default', ...
    durability: str  # 'volatile', 'transient_local', ...
    depth: int


@dataclass
class Topic:
    name: str
    msgtype: str
    serialization_format: str
    qos: tuple[OfferedQos, ...] | None  # None: nothing recorded, or nothing that parses
    count: int = 0  # messages in the storage files

    @property
    def key(self) -> tuple[str, str]:
        return self.name, self.msgtype


def parse_offered_qos(profiles) -> tuple[OfferedQos, ...] | None:
    """Parse offered_qos_profiles as metadata.yaml holds them; None if absent or unparseable.

    Up to metadata version 8 they are a YAML string with integer policies, from version 9 a
    list with policy names.
    """
    from rosbags.interfaces import QosDurability, QosReliability

    try:
        if isinstance(profiles, str):
            profiles = yaml.safe_load(profiles)
        parsed = tuple(OfferedQos(_policy(QosReliability, p['reliability']),
                                  _policy(QosDurability, p['durability']),
                                  int(p.get('depth', 0)))
                       for p in profiles)
    except (yaml.YAMLError, TypeError, KeyError, ValueError, AttributeError):
        return None
    return parsed or None


def _policy(enum, value) -> str:
    member = enum(value) if isinstance(value, int) else enum[value.upper()]
    return member.name.lower()


def storage_qos(connection) -> tuple[OfferedQos, ...] | None:
    """Return the offered QoS a storage file holds for a connection (as rosbags parsed it)."""
    offered = tuple(OfferedQos(q.reliability.name.lower(), q.durability.name.lower(), q.depth)
                    for q in connection.ext.offered_qos_profiles)
    return offered or None


def load_metadata(path: Path) -> dict:
    try:
        text = (path / 'metadata.yaml').read_text()
    except OSError as err:
        raise BagError(f'{path} is not a rosbag2 bag folder: {err}') from None
    try:
        return yaml.safe_load(text)['rosbag2_bagfile_information']
    except (yaml.YAMLError, TypeError, KeyError) as err:
        raise BagError(f'{path / "metadata.yaml"} is not rosbag2 metadata: {err}') from None


class BagReader:
    """An open rosbag2 bag folder: its topics, time span, and raw messages (a context manager).

    Topics and message counts are the storage files' own; metadata.yaml contributes the file
    list, storage, compression, version and, where it parses, each topic's offered QoS.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta = load_metadata(self.path)
        self.storage = meta.get('storage_identifier', '')
        self.version = meta.get('version')
        self.ros_distro = meta.get('ros_distro')
        self.compression = _compression(meta)
        self.files = [self.path / PurePath(name).name
                      for name in meta.get('relative_file_paths') or ()]
        if self.storage not in ('mcap', 'sqlite3'):
            raise BagError(f'{self.path}: storage {self.storage!r} is not supported '
                           '(mcap, sqlite3)')
        if not self.files:
            raise BagError(f'{self.path}: metadata.yaml lists no storage file')
        advice = _qos_advice(meta)
        self._stack = ExitStack()
        try:
            self._readers = [self._open(file) for file in self.files]
        except BaseException:
            self._stack.close()
            raise
        self._topics: dict[tuple[str, str], Topic] = {}
        for reader in self._readers:
            for conn in reader.connections:
                key = (conn.topic, conn.msgtype)
                if key not in self._topics:
                    self._topics[key] = Topic(conn.topic, conn.msgtype,
                                              conn.ext.serialization_format,
                                              advice.get(key) or storage_qos(conn))
                self._topics[key].count += conn.msgcount
        spans = [(r.start_time, r.end_time - 1) for r in self._readers if r.message_count]
        self.start_ns = min((s for s, _ in spans), default=None)
        self.end_ns = max((e for _, e in spans), default=None)  # the last message's log time

    @property
    def topics(self) -> list[Topic]:
        return list(self._topics.values())

    @property
    def message_count(self) -> int:
        return sum(t.count for t in self._topics.values())

    @property
    def size(self) -> int:
        """Bytes on disk of the storage files."""
        return sum(file.stat().st_size for file in self.files)

    def messages(self, topics=None, start: int | None = None):
        """Yield (topic, log time in ns, raw CDR bytes) in log-time order within each file.

        topics: Topic objects to read (default: all); start: skip messages logged before it.
        """
        keys = None if topics is None else {t.key for t in topics}
        for reader in self._readers:
            conns = [c for c in reader.connections
                     if keys is None or (c.topic, c.msgtype) in keys]
            if not conns:  # rosbags reads every connection when given none
                continue
            for conn, log_ns, data in reader.messages(connections=conns, start=start):
                yield self._topics[conn.topic, conn.msgtype], log_ns, self._decompress(data)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self, file: Path):
        from rosbags.rosbag2 import Reader, ReaderError

        if not file.is_file():
            raise BagError(f'storage file {file} is missing')
        if self.compression == 'file':
            file = self._decompressed(file)
        try:
            reader = Reader(file)  # by suffix: .mcap or .db3, that file alone
            reader.open()
        except ReaderError as err:
            raise BagError(f'cannot read {file}: {err}') from None
        self._stack.callback(reader.close)
        return reader

    def _decompressed(self, file: Path) -> Path:
        """Decompress a file-compressed storage file ('x.mcap.zstd') into a temporary folder."""
        import zstandard

        out = Path(self._stack.enter_context(tempfile.TemporaryDirectory())) / file.stem
        with file.open('rb') as src, out.open('wb') as dst:
            zstandard.ZstdDecompressor().copy_stream(src, dst)
        return out

    def _decompress(self, data) -> bytes:
        if self.compression != 'message':
            return data
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _qos_advice(meta: dict) -> dict:
    """Return {(topic, type): offered QoS or None} from metadata.yaml's topics."""
    topics = [entry.get('topic_metadata') or {}
              for entry in meta.get('topics_with_message_count') or ()]
    return {(t.get('name'), t.get('type')): parse_offered_qos(t.get('offered_qos_profiles'))
            for t in topics}


def _compression(meta: dict) -> str | None:
    """Return None, 'file' or 'message' (zstd is the only format rosbag2 ships)."""
    mode = (meta.get('compression_mode') or '').lower()
    if mode in ('', 'none'):
        return None
    fmt = meta.get('compression_format')
    if mode not in ('file', 'message') or fmt != 'zstd':
        raise BagError(f'compression {fmt!r} in {mode!r} mode is not supported (zstd only)')
    return mode

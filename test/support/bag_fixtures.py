"""Bags as rosbag2 releases from Foxy to Kilted leave them, for the reader and player tests.

Each case is written with rosbags' Writer, then edited into a release's shape: metadata.yaml
loses the keys its version did not have yet (files < 5, custom_data < 6, type hashes < 7,
ros_distro < 8), older sqlite3 files lose the tables and columns they did not have, and the
offered QoS of metadata.yaml and of the storage file disagree as they do in real bags: an
infinite duration as `sec: 0` in one and `sec: 2147483647` in the other, a YAML string against a
list, QoS missing on one side, or text that is no QoS at all.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import yaml
from rclpy.serialization import serialize_message
from rosbags.interfaces import Qos
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg

from ams_ros.ros import bag

START_NS = 1_700_000_000 * 10**9
STEP_NS = 20_000_000
UNKNOWN_TYPE = 'ams_test_unknown/msg/Mystery'  # in no type store, importable nowhere

# How an infinite duration is spelled: unset, rmw_time_t's maximum (Foxy), rclcpp's (Humble on).
DURATIONS = {'sec0': (0, 0), 'int_max': (2147483647, 4294967295),
             'names': (9223372036, 854775807)}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    msgtype: str
    count: int
    latched: bool  # offered reliable + transient local (else reliable + volatile)


CHATTER = TopicSpec('/chatter', 'std_msgs/msg/String', 7, False)
BASIC = TopicSpec('/basic', 'test_msgs/msg/BasicTypes', 5, True)
MYSTERY = TopicSpec('/mystery', UNKNOWN_TYPE, 3, False)
TOPICS = (CHATTER, BASIC, MYSTERY)


@dataclass(frozen=True)
class Case:
    release: str
    storage: str  # 'mcap' or 'sqlite3'
    version: int  # metadata version, 4 to 9
    metadata_qos: str  # 'sec0', 'int_max' (YAML strings), 'names' (a list), 'missing', 'garbage'
    storage_qos: str  # 'sec0', 'int_max', 'names' (all YAML text) or 'missing'
    compression: str = ''  # '', 'message' or 'file' (zstd)

    @property
    def name(self) -> str:
        return '-'.join(filter(None, (self.release, self.storage, f'v{self.version}',
                                      self.compression)))

    @property
    def qos_advice(self) -> bool:
        """Whether either side holds offered QoS that parses (else the player's default)."""
        return self.metadata_qos not in ('missing', 'garbage') or self.storage_qos != 'missing'


CASES = (
    Case('foxy', 'sqlite3', 4, 'int_max', 'sec0'),
    Case('galactic', 'sqlite3', 5, 'sec0', 'int_max'),
    Case('humble', 'mcap', 5, 'sec0', 'int_max'),
    Case('humble', 'sqlite3', 6, 'missing', 'sec0'),
    Case('iron', 'mcap', 7, 'int_max', 'missing', 'message'),
    Case('jazzy', 'mcap', 8, 'garbage', 'int_max'),
    Case('jazzy', 'sqlite3', 8, 'garbage', 'missing', 'file'),
    Case('kilted', 'mcap', 9, 'names', 'sec0', 'file'),
    Case('kilted', 'sqlite3', 9, 'names', 'int_max', 'message'),
)


def message_bytes(store, spec: TopicSpec, i: int) -> bytes:
    """Return the i-th message of a topic as CDR (rclpy's serializer where it can)."""
    if spec.msgtype == UNKNOWN_TYPE:
        msg = store.types[UNKNOWN_TYPE](value=i)
        return bytes(store.serialize_cdr(msg, UNKNOWN_TYPE))
    msg = bag.rclpy_type(spec.msgtype)()
    if spec is CHATTER:
        msg.data = f'hello {i}'
    else:
        msg.int32_value, msg.float64_value = i, i / 2
    return serialize_message(msg)


def expected_values(spec: TopicSpec) -> list:
    """Return what a subscriber reads from each message of the topic, in order."""
    if spec is CHATTER:
        return [f'hello {i}' for i in range(spec.count)]
    return [(i, i / 2) for i in range(spec.count)]


def write_case(path: Path, case: Case, topics=TOPICS) -> Path:
    """Write the case's bag to path (a new folder) and return it."""
    store = bag.typestore(BASIC.msgtype)
    store.register(get_types_from_msg('int32 value', UNKNOWN_TYPE))
    writer = Writer(path, version=9 if case.storage_qos == 'names' else 8,
                    storage_plugin=StoragePlugin[case.storage.upper()])
    if case.compression:
        writer.set_compression(CompressionMode[case.compression.upper()],
                               CompressionFormat.ZSTD)
    with writer:
        conns = {spec: writer.add_connection(spec.name, spec.msgtype, typestore=store,
                                             offered_qos_profiles=_storage_qos(case, spec))
                 for spec in topics}
        # Interleaved topics, one message every STEP_NS.
        order = sorted(((i, n, spec) for n, spec in enumerate(topics)
                        for i in range(spec.count)), key=lambda x: x[:2])
        for step, (i, _, spec) in enumerate(order):
            writer.write(conns[spec], START_NS + step * STEP_NS, message_bytes(store, spec, i))
    if case.storage == 'sqlite3' and case.version < 7:
        _downgrade_sqlite(next(path.glob('*.db3')), foxy=case.version < 5)
    _edit_metadata(path / 'metadata.yaml', case)
    return path


def _storage_qos(case: Case, spec: TopicSpec) -> list[Qos]:
    if case.storage_qos == 'missing':
        return []
    return [bag.bag_qos(True, spec.latched, infinite=DURATIONS[case.storage_qos])]


def _metadata_qos(form: str, spec: TopicSpec):
    """Return offered_qos_profiles for metadata.yaml in a form a release writes.

    A YAML string of integer policies up to version 8, a list of named policies from 9, or
    text that is no QoS at all.
    """
    if form == 'garbage':
        return '{not: [qos'
    names = form == 'names'
    sec, nsec = DURATIONS[form]
    profile = {
        'history': 'keep_last' if names else 1, 'depth': 10,
        'reliability': 'reliable' if names else 1,
        'durability': ('transient_local' if spec.latched else 'volatile') if names
        else (1 if spec.latched else 2),
        **{key: {'sec': sec, 'nsec': nsec}
           for key in ('deadline', 'lifespan', 'liveliness_lease_duration')},
        'liveliness': 'automatic' if names else 1,
        'avoid_ros_namespace_conventions': False}
    return [profile] if names else yaml.safe_dump([profile])


def _edit_metadata(path: Path, case: Case) -> None:
    doc = yaml.safe_load(path.read_text())
    meta = doc['rosbag2_bagfile_information']
    meta['version'] = case.version
    meta['ros_distro'] = case.release
    for key, since in (('files', 5), ('custom_data', 6), ('ros_distro', 8)):
        if case.version < since:
            del meta[key]
    specs = {spec.name: spec for spec in TOPICS}
    for entry in meta['topics_with_message_count']:
        topic = entry['topic_metadata']
        if case.version < 7:
            del topic['type_description_hash']
        if case.metadata_qos == 'missing':
            del topic['offered_qos_profiles']
        else:
            topic['offered_qos_profiles'] = _metadata_qos(case.metadata_qos,
                                                          specs[topic['name']])
    path.write_text(yaml.safe_dump(doc))


def _downgrade_sqlite(path: Path, foxy: bool) -> None:
    """Drop what sqlite3 files of Foxy (no schema table) or Galactic/Humble (schema 3) lack."""
    db = sqlite3.connect(path)
    with db:
        db.execute('DROP TABLE message_definitions')
        db.execute('ALTER TABLE topics DROP COLUMN type_description_hash')
        if foxy:
            db.execute('DROP TABLE schema')
            db.execute('DROP TABLE metadata')
        else:
            db.execute('UPDATE schema SET schema_version = 3')
    db.close()

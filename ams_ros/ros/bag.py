"""`ams bag`: write, play and record rosbag2 files without a ROS install (pure-Python rosbags).

    ams bag record-synthetic flight --seed 1003 --duration 60 --fps 5  # mcap; --storage sqlite3
    ams bag play flight --rate 1 --loop --start-offset 10              # publishes /clock too
    ams bag info flight                                                # topics, counts, times
    ams bag record traffic --topics /ams/patch /ams/snapshot           # until Ctrl-C

Bags use the standard rosbag2 layout (metadata.yaml, standard type names, offered QoS profiles),
so `ros2 bag play` and `ros2 bag info` read them on a real ROS machine, and these tools read bags
that `ros2 bag record` of any release wrote (bag_reader.py). The player publishes each message's
raw CDR bytes at its original log time (scaled by --rate); nodes started with
`use_sim_time:=true` follow the bag's /clock. Topics whose type is not installed are skipped,
each named once. Recorded QoS only advises the player's QoS. Types that the standard type store
lacks (ams_msgs) are registered from the installed .msg files.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ams_ros.ros.bag_reader import BagError, BagReader

IMAGE_TYPE = 'sensor_msgs/msg/Image'
CLOCK_TYPE = 'rosgraph_msgs/msg/Clock'
INFINITE = (9223372036, 854775807)  # rosbag2's spelling of an infinite QoS duration


# -- types -------------------------------------------------------------------------------------

def typestore(*msgtypes: str):
    """Return a ROS 2 Kilted type store that also knows the given (e.g. ams_msgs) types."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    for msgtype in msgtypes:
        ensure_type(store, msgtype)
    return store


def ensure_type(store, msgtype: str) -> None:
    """Register msgtype's package from its installed .msg files if the store lacks the type."""
    from rosbags.typesys import get_types_from_msg

    if msgtype in store.fielddefs:
        return
    package = msgtype.split('/')[0]
    types = {}
    for path in sorted(_msg_dir(package).glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'{package}/msg/{path.stem}'))
    store.register(types)
    if msgtype not in store.fielddefs:
        raise KeyError(f'type {msgtype} not found among the .msg files of {package}')


def _msg_dir(package: str) -> Path:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(package)) / 'msg'
    except Exception:  # noqa: BLE001 - fall back on the source tree (ams_msgs beside ams_ros)
        source = Path(__file__).resolve().parents[1] / package / 'msg'
        if source.is_dir():
            return source
        raise


def rclpy_type(msgtype: str):
    """Return the rclpy message class of 'pkg/msg/Name'."""
    package, _, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{package}.msg'), name)


def installed_type(msgtype: str):
    """Return the rclpy message class of msgtype, or None where it is not installed."""
    try:
        return rclpy_type(msgtype)
    except (ImportError, AttributeError, ValueError):
        return None


def read_messages(path: str | Path, topics=()):
    """Yield (topic, log time in ns, decoded message) of a bag's `topics` (default: all)."""
    with BagReader(path) as reader:
        chosen = [t for t in reader.topics if not topics or t.name in topics]
        store = typestore(*{t.msgtype for t in chosen})
        for topic, log_ns, data in reader.messages(chosen):
            yield topic.name, log_ns, store.deserialize_cdr(data, topic.msgtype)


# -- QoS ---------------------------------------------------------------------------------------

def bag_qos(reliable: bool, transient_local: bool = False, depth: int = 10,
            infinite: tuple[int, int] = INFINITE):
    """Return a rosbags Qos (as ros2 bag writes offered profiles).

    `infinite`: (sec, nsec) that spells an unset duration; rosbag2 releases differ on it.
    """
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    forever = QosTime(*infinite)
    return Qos(QosHistory.KEEP_LAST, depth,
               QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
               forever, forever, QosLiveliness.AUTOMATIC, forever, False)


def playback_qos(offered):
    """Return the rclpy QoS to republish a topic recorded with these offered profiles.

    `offered`: bag_reader.OfferedQos advice, or None when the bag holds none that parses. As ros2
    bag play does: best effort if a recorded publisher offered it, transient local only if every
    one did; without advice reliable, volatile, depth 10 (what every subscriber can match).
    """
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    offered = offered or ()
    best_effort = any(q.reliability == 'best_effort' for q in offered)
    latched = bool(offered) and all(q.durability == 'transient_local' for q in offered)
    depth = max([q.depth for q in offered] + [1]) if offered else 10
    return QoSProfile(depth=depth,
                      reliability=(ReliabilityPolicy.BEST_EFFORT if best_effort
                                   else ReliabilityPolicy.RELIABLE),
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                  else DurabilityPolicy.VOLATILE))


# -- record-synthetic --------------------------------------------------------------------------

def record_synthetic(path: str | Path, seed: int = 1003, duration: float = 60.0,
                     fps: float = 5.0, height: int = 128, width: int = 256,
                     start_time: float = 0.0, storage: str = 'mcap', labels: bool = True,
                     topic: str = '/camera/image_raw', labels_topic: str = '/camera/labels',
                     frame_id: str = 'camera', progress: bool = False) -> int:
    """Write a synthetic flight's frames (and true labels) as a bag; return the frame count.

    Log time = header stamp = start_time + t, the flight's capture time.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    from ams_ros.world import AerialVideo

    store = typestore()
    Image = store.types[IMAGE_TYPE]
    Header = store.types['std_msgs/msg/Header']
    Time = store.types['builtin_interfaces/msg/Time']
    video = AerialVideo(seed, duration, start_time)
    frames = video.frames(fps, height, width)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, total=int(np.floor(duration * fps + 1e-9)) + 1, unit='frame')
    count = 0
    writer = Writer(Path(path), version=Writer.VERSION_LATEST,
                    storage_plugin=StoragePlugin[storage.upper()])
    with writer:
        image_conn = writer.add_connection(topic, IMAGE_TYPE, typestore=store,
                                           offered_qos_profiles=[bag_qos(False, depth=5)])
        label_conn = (writer.add_connection(labels_topic, IMAGE_TYPE, typestore=store,
                                            offered_qos_profiles=[bag_qos(True)])
                      if labels else None)
        writer.set_custom_data('ams.synthetic', f'seed={seed} start_time={start_time!r} '
                               f'duration={duration!r} fps={fps!r} size={height}x{width}')
        for stamp, frame, label in frames:
            ns = int(round(stamp * 1e9))
            header = Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=frame_id)
            for conn, pixels, encoding in ((image_conn, frame, 'rgb8'),
                                           (label_conn, label, 'mono8')):
                if conn is None:
                    continue
                channels = 1 if pixels.ndim == 2 else pixels.shape[2]
                msg = Image(header=header, height=pixels.shape[0], width=pixels.shape[1],
                            encoding=encoding, is_bigendian=0,
                            step=pixels.shape[1] * channels,
                            data=np.ascontiguousarray(pixels).reshape(-1))
                writer.write(conn, ns, bytes(store.serialize_cdr(msg, IMAGE_TYPE)))
            count += 1
    return count


# -- play --------------------------------------------------------------------------------------

class BagPlayer:
    """Publish a bag's messages at their recorded pace from a node (raw CDR, no decoding).

    Topics whose type is not installed are skipped, each named once on stderr with its message
    count. A bag with messages none of which can be played raises BagError with the reason.
    """

    def __init__(self, node, path: str | Path, rate: float = 1.0, loop: bool = False,
                 start_offset: float = 0.0, topics=None, clock: bool = True,
                 clock_hz: float = 40.0, remap: dict[str, str] | None = None):
        if rate <= 0:
            raise ValueError(f'rate must be > 0, got {rate}')
        self.node, self.rate, self.loop = node, rate, loop
        self.bag = BagReader(path)
        wanted = {_absolute(t) for t in topics or ()}
        remap = remap or {}
        self.publishers = {}
        for topic in self.bag.topics:
            if wanted and topic.name not in wanted:
                continue
            msg_type = installed_type(topic.msgtype)
            if msg_type is None:
                print(f'skipping {topic.name}: type {topic.msgtype} is not installed '
                      f'({topic.count} messages)', file=sys.stderr)
                continue
            self.publishers[topic.name] = node.create_publisher(
                msg_type, remap.get(topic.name, topic.name), playback_qos(topic.qos))
        self.playing = [t for t in self.bag.topics if t.name in self.publishers]
        self.playable = sum(t.count for t in self.playing)
        if self.bag.message_count and not self.playable:
            self.bag.close()
            raise BagError(f'nothing to play in {path}: {self._why_nothing(wanted)}')
        self.start_ns = (None if self.bag.start_ns is None
                         else self.bag.start_ns + int(start_offset * 1e9))
        self.clock_pub = None
        if clock:
            from rclpy.qos import QoSProfile, ReliabilityPolicy

            self.clock_pub = node.create_publisher(
                rclpy_type(CLOCK_TYPE), '/clock',
                QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.clock_period = 1.0 / clock_hz if clock and clock_hz > 0 else None
        self.published = dict.fromkeys(self.publishers, 0)
        self.stop_event = threading.Event()

    def wait_for_all_acked(self, timeout: float) -> list[str]:
        """Wait until reliable subscribers acknowledged all played; return topics still not.

        Gives up after `timeout` seconds. Without this a player that exits right after its
        last message can take that message with it: a reliable writer destroyed before its
        readers acknowledge loses what is still in flight.
        """
        from rclpy.duration import Duration

        deadline = time.monotonic() + timeout
        return [name for name, publisher in self.publishers.items() if not
                publisher.wait_for_all_acked(Duration(seconds=max(0.0, deadline -
                                                                   time.monotonic())))]

    def wait_for_subscribers(self, topics, timeout: float = 30.0) -> bool:
        """Wait until each of `topics` (as recorded) has a matched subscriber."""
        if unplayed := [t for t in topics if t not in self.publishers]:
            raise BagError(f'cannot wait for {unplayed}: the player does not publish them')
        deadline = time.monotonic() + timeout
        for topic in topics:
            while self.publishers[topic].get_subscription_count() < 1:
                if time.monotonic() > deadline or self.stop_event.wait(0.05):
                    return False
        return True

    def play(self) -> int:
        """Play the bag (again and again with loop); return the number of messages published.

        Like ros2 bag play, each pass of a loop starts /clock over from the bag's start.
        """
        while not self.stop_event.is_set():
            self._play_once()
            if not self.loop:
                break
        return sum(self.published.values())

    def summary(self) -> str:
        """Per topic of the bag: messages in the bag, messages published."""
        rows = [('topic', 'in bag', 'published')] + [
            (t.name, t.count, self.published.get(t.name, 0)) for t in self.bag.topics]
        width = max(len(name) for name, _, _ in rows)
        return '\n'.join(f'{name:<{width}}  {count:>8}  {sent:>9}' for name, count, sent in rows)

    def close(self) -> None:
        self.bag.close()

    def _why_nothing(self, wanted) -> str:
        chosen = [t for t in self.bag.topics if not wanted or t.name in wanted]
        if not chosen:
            return f'it has none of the topics {sorted(wanted)}'
        missing = sorted({t.msgtype for t in chosen if t.name not in self.publishers})
        if missing:
            return f'no message of an installed type (not installed: {", ".join(missing)})'
        return 'the chosen topics hold no messages'

    def _play_once(self) -> None:
        wall0 = time.monotonic()
        first_ns = None
        for topic, log_ns, data in self.bag.messages(self.playing, start=self.start_ns):
            first_ns = log_ns if first_ns is None else first_ns
            due = wall0 + (log_ns - first_ns) * 1e-9 / self.rate
            while True:  # wait for the message's time, ticking /clock meanwhile
                now = time.monotonic()
                self._publish_clock(first_ns + int((now - wall0) * self.rate * 1e9), log_ns)
                if now >= due:
                    break
                step = due - now if self.clock_period is None else min(self.clock_period,
                                                                       due - now)
                if self.stop_event.wait(step):
                    return
            self.publishers[topic.name].publish(bytes(data))
            self.published[topic.name] += 1

    def _publish_clock(self, ns: int, limit_ns: int) -> None:
        if self.clock_pub is None:
            return
        from builtin_interfaces.msg import Time

        ns = min(ns, limit_ns)  # sim time never runs past the next message
        msg = rclpy_type(CLOCK_TYPE)()
        msg.clock = Time(sec=ns // 10**9, nanosec=ns % 10**9)
        self.clock_pub.publish(msg)


# -- record ------------------------------------------------------------------------------------

class BagRecorder:
    """Subscribe to topics (raw, QoS matched to their publishers) and write them to a bag.

    Topics that have no publisher yet are picked up when they appear (`poll()`). Log time is the
    node's clock (sim time under use_sim_time).
    """

    def __init__(self, node, path: str | Path, topics, storage: str = 'mcap'):
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.node = node
        self.topics = [_absolute(t) for t in topics]
        self.store = typestore()
        self.writer = Writer(Path(path), version=Writer.VERSION_LATEST,
                             storage_plugin=StoragePlugin[storage.upper()])
        self.writer.open()
        self.connections = {}
        self.subscriptions = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.poll()
        self.timer = node.create_timer(0.2, self.poll)

    def poll(self) -> None:
        """Subscribe to wanted topics that now have publishers."""
        types = dict(self.node.get_topic_names_and_types())
        for topic in self.topics:
            if topic in self.connections or not types.get(topic):
                continue
            msgtype = types[topic][0]
            infos = self.node.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            offered = [_bag_qos_of(info.qos_profile) for info in infos]
            ensure_type(self.store, msgtype)
            with self._lock:
                self.connections[topic] = self.writer.add_connection(
                    topic, msgtype, typestore=self.store, offered_qos_profiles=offered)
                self.counts[topic] = 0
            self.subscriptions.append(self.node.create_subscription(
                rclpy_type(msgtype), topic, lambda data, t=topic: self._write(t, data),
                _subscription_qos(offered), raw=True))

    def drain(self, quiet: float = 0.3, limit: float = 3.0) -> None:
        """Wait until no message arrived for `quiet` seconds (at most `limit`), e.g. at stop."""
        deadline = time.monotonic() + limit
        last = -1
        while time.monotonic() < deadline:
            total = sum(self.counts.values())
            if total == last:
                return
            last = total
            time.sleep(quiet)

    def close(self) -> dict[str, int]:
        """Finish the bag (metadata.yaml); return the message count per topic."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.node.destroy_timer(self.timer)
                for sub in self.subscriptions:
                    self.node.destroy_subscription(sub)
                self.writer.close()
        return dict(self.counts)

    def _write(self, topic: str, data: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            self.writer.write(self.connections[topic], self.node.get_clock().now().nanoseconds,
                              data)
            self.counts[topic] += 1


def _bag_qos_of(profile):
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    return bag_qos(profile.reliability == ReliabilityPolicy.RELIABLE,
                   profile.durability == DurabilityPolicy.TRANSIENT_LOCAL,
                   max(int(profile.depth), 1))


def _subscription_qos(offered):
    """Match every publisher: reliable / transient local only if all of them offer it."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    reliable = all(q.reliability.name == 'RELIABLE' for q in offered)
    latched = all(q.durability.name == 'TRANSIENT_LOCAL' for q in offered)
    return QoSProfile(depth=100,
                      reliability=(ReliabilityPolicy.RELIABLE if reliable
                                   else ReliabilityPolicy.BEST_EFFORT),
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                  else DurabilityPolicy.VOLATILE))


# -- command line ------------------------------------------------------------------------------

def _run_node(name: str, args, setup) -> int:
    """Init rclpy, build what `setup(node)` returns, spin until it ends or SIGINT/SIGTERM."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    # Only --ros-args reach rcl: the tool's own arguments (e.g. --remap A:=B) are not for it.
    rclpy.init(args=['ams_bag', '--ros-args', *args.ros_args] if args.ros_args else [],
               signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(name)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        return setup(node, stop)
    finally:
        executor.shutdown(timeout_sec=2.0)
        spinner.join(timeout=2.0)
        node.destroy_node()
        rclpy.try_shutdown()


def _play(args) -> int:
    remap = dict(r.split(':=', 1) for r in args.remap)

    def run(node, stop):
        player = BagPlayer(node, args.bag, rate=args.rate, loop=args.loop,
                           start_offset=args.start_offset, topics=args.topics or None,
                           clock=not args.no_clock, clock_hz=args.clock_hz, remap=remap)
        try:
            return play(player, stop)
        finally:
            player.close()

    def play(player, stop):
        threading.Thread(target=lambda: (stop.wait(), player.stop_event.set()),
                         daemon=True).start()
        wait_for = [_absolute(t) for t in args.wait_for]
        if wait_for:
            if not player.wait_for_subscribers(wait_for, args.wait_timeout):
                print(f'no subscriber on {args.wait_for} within {args.wait_timeout} s',
                      file=sys.stderr)
                return 1
            # Matching is not symmetric: a subscriber may learn of the player a moment after
            # the player learned of it, and best-effort messages sent in between are lost.
            if stop.wait(args.settle):
                return 0
        if args.delay > 0 and stop.wait(args.delay):
            return 0
        count = player.play()
        interrupted = player.stop_event.is_set()
        if not interrupted and (unacked := player.wait_for_all_acked(args.wait_for_all_acked)):
            print(f'not acknowledged within {args.wait_for_all_acked:g} s on {unacked}: '
                  'a subscriber may have missed the last messages', file=sys.stderr)
        print(player.summary())
        print(f'played {count} messages from {args.bag}')
        stop.set()
        if player.playable and not count and not interrupted:  # never a silent empty play
            raise BagError(f'played none of the {player.playable} messages of installed types'
                           + (f' from --start-offset {args.start_offset:g} s on'
                              if args.start_offset else ''))
        return 0

    return _run_node('ams_bag_player', args, run)


def _info(args) -> int:
    with BagReader(args.bag) as reader:
        print(describe(reader))
    return 0


def describe(reader: BagReader) -> str:
    """Summarise a bag in the layout of `ros2 bag info`, with its rosbag2 version."""
    fields = [('Files', '\n'.join(f.name for f in reader.files)),
              ('Bag size', _size(reader.size)),
              ('Storage id', reader.storage),
              ('rosbag2 version', reader.version),
              ('ROS Distro', reader.ros_distro or 'unknown'),
              ('Compression', f'zstd ({reader.compression})' if reader.compression else 'none')]
    if reader.start_ns is not None:
        fields += [('Duration', _seconds(reader.end_ns - reader.start_ns) + 's'),
                   ('Start', _time(reader.start_ns)),
                   ('End', _time(reader.end_ns))]
    fields.append(('Messages', reader.message_count))
    topics = [f'Topic: {t.name} | Type: {t.msgtype} | Count: {t.count} | '
              f'Serialization Format: {t.serialization_format}' for t in reader.topics]
    fields.append(('Topic information', '\n'.join(topics)))
    return '\n'.join(f'{label + ":":<19}' + str(value).replace('\n', '\n' + ' ' * 19)
                     for label, value in fields)


def _seconds(ns: int) -> str:
    return f'{ns // 10**9}.{ns % 10**9:09d}'


def _time(ns: int) -> str:
    stamp = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ns // 10**9))
    return f'{stamp}.{ns % 10**9:09d} UTC ({_seconds(ns)})'


def _size(size: float) -> str:
    units = ['B', 'KiB', 'MiB', 'GiB']
    while size >= 1024 and len(units) > 1:
        size /= 1024
        units.pop(0)
    return f'{size:.1f} {units[0]}'


def _absolute(topic: str) -> str:
    return topic if topic.startswith('/') else '/' + topic


def _record(args) -> int:
    def run(node, stop):
        recorder = BagRecorder(node, args.bag, args.topics, storage=args.storage)
        stop.wait(args.duration if args.duration > 0 else None)
        recorder.drain()
        counts = recorder.close()
        print(f'recorded {sum(counts.values())} messages to {args.bag}: {counts}')
        return 0

    return _run_node('ams_bag_recorder', args, run)


def _record_synthetic(args) -> int:
    count = record_synthetic(args.bag, seed=args.seed, duration=args.duration, fps=args.fps,
                             height=args.height, width=args.width, start_time=args.start_time,
                             storage=args.storage, labels=not args.no_labels,
                             topic=args.topic, labels_topic=args.labels_topic,
                             progress=sys.stderr.isatty())
    print(f'wrote {count} frames of flight {args.seed} to {args.bag} ({args.storage})')
    return 0


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog='ams bag', description=__doc__.split('\n')[0])
    commands = parser.add_subparsers(dest='bag_command', required=True)

    synth = commands.add_parser('record-synthetic', help="write a synthetic flight's camera "
                                '(and true labels) topics to a bag')
    synth.add_argument('bag', help='output bag folder (must not exist)')
    synth.add_argument('--seed', type=int, default=1003, help='flight seed (>= 1000: held out)')
    synth.add_argument('--duration', type=float, default=60.0, help='seconds of flight')
    synth.add_argument('--fps', type=float, default=5.0)
    synth.add_argument('--width', type=int, default=256)
    synth.add_argument('--height', type=int, default=128)
    synth.add_argument('--start-time', type=float, default=0.0,
                       help='stamp of the first frame (s); the flight is stamped from here')
    synth.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    synth.add_argument('--topic', default='/camera/image_raw')
    synth.add_argument('--labels-topic', default='/camera/labels')
    synth.add_argument('--no-labels', action='store_true', help='leave the true labels out')
    synth.set_defaults(bag_run=_record_synthetic)

    play = commands.add_parser('play', help="publish a bag's messages with their original "
                               'timing, and /clock')
    play.add_argument('bag')
    play.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    play.add_argument('--loop', action='store_true')
    play.add_argument('--start-offset', type=float, default=0.0,
                      help='skip this many seconds from the start of the bag')
    play.add_argument('--topics', nargs='*', default=[], help='only these topics')
    play.add_argument('--remap', nargs='*', default=[], metavar='FROM:=TO')
    play.add_argument('--no-clock', action='store_true', help='do not publish /clock')
    play.add_argument('--clock-hz', type=float, default=40.0, help='/clock ticks per second')
    play.add_argument('--wait-for', nargs='*', default=[], metavar='TOPIC',
                      help='start once each of these topics has a subscriber')
    play.add_argument('--wait-timeout', type=float, default=30.0)
    play.add_argument('--settle', type=float, default=1.0,
                      help='seconds to wait after --wait-for matched (discovery settles)')
    play.add_argument('--delay', type=float, default=0.0, help='seconds to wait before playing')
    play.add_argument('--wait-for-all-acked', type=float, default=5.0, metavar='S',
                      help='at the end, wait up to S seconds for reliable subscribers to '
                           'acknowledge every message (default 5)')
    play.add_argument('--ros-args', nargs=argparse.REMAINDER, default=[])
    play.set_defaults(bag_run=_play)

    info = commands.add_parser('info', help="print a bag's topics, types, message counts, "
                               'time span, storage and rosbag2 version')
    info.add_argument('bag')
    info.set_defaults(bag_run=_info)

    record = commands.add_parser('record', help='record topics to a bag until Ctrl-C')
    record.add_argument('bag')
    record.add_argument('--topics', nargs='+', required=True)
    record.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    record.add_argument('--duration', type=float, default=0.0,
                        help='stop after this many seconds (0: at Ctrl-C)')
    record.add_argument('--ros-args', nargs=argparse.REMAINDER, default=[])
    record.set_defaults(bag_run=_record)
    return parser


def run(args) -> int:
    """Run a parsed `ams bag` command line; a bag it cannot read or play exits 1, with why."""
    try:
        return args.bag_run(args)
    except BagError as err:
        print(f'ams bag {args.bag_command}: {err}', file=sys.stderr)
        return 1


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())

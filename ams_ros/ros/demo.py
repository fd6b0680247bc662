"""`ams demo`: a whole AMS system on this machine, measured against the student without updates.

With no arguments it flies a held-out synthetic flight (a world the pretrained student never
saw) in real time: a camera node, the drone node and the ground node run as separate processes
and talk over DDS, exactly as on a drone and a ground station. The ground labels the drone's
sampled frames with the synthetic world's perfect teacher for the same flight, trains, and
streams patches; the drone applies them while it segments every frame.

A monitor node in this process receives the camera's frames and true labels, the drone's masks
and its EdgeStatus, and shows progress while it runs: patches applied, the adapting student's
mIoU against the truth next to the same pretrained student without updates (run here, on the
same frames), and uplink/downlink kbit/s. At the end (after --duration, or at Ctrl-C) it stops
every process and writes a report folder: summary.json (every figure), miou.png, bandwidth.png
and each node's log.

    ams demo                                # 3 minutes, 256x128 at 5 fps, CPU settings
    ams demo --duration 60 --report out/    # shorter, report in out/
    ams demo --bag flight                   # replay a bag instead (labels topic for mIoU)
    ams demo --ground-param trainer.iterations:=20
    ams demo --task person --video clip.mp4 --checkpoint student_person.pt
                                            # your task on your clip (looped); the truth is the
                                            # task's teacher, run here on the camera's frames

The report also holds side_by_side.mp4: camera | teacher | no updates | adapting, per frame.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml

PACKAGE_ROOT = Path(__file__).resolve().parent
# Topics in the drone's namespace (as `ams launch demo` and demo.launch.py place them).
IMAGE_TOPIC = 'camera/image_raw'
LABELS_TOPIC = 'camera/labels'
MASK_TOPIC = 'ams_drone/mask'
STATUS_TOPIC = 'ams/status'
FRAMES_TOPIC = 'ams/frames'


def _topic(namespace: str, name: str) -> str:
    return '/' + '/'.join(part for part in (namespace.strip('/'), name) if part)


def _ros_value(value) -> str:
    """Spell a parameter value for `-p name:=value` (floats keep their point)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(_ros_value(v) for v in value) + ']'
    return repr(value) if isinstance(value, float) else str(value)


def _bag_flight(path: Path) -> dict:
    """Return the synthetic flight a bag was rendered from (ams bag record-synthetic), if any."""
    meta = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    text = (meta.get('custom_data') or {}).get('ams.synthetic', '')
    fields = dict(item.split('=', 1) for item in text.split() if '=' in item)
    info = {'duration': meta['duration']['nanoseconds'] * 1e-9,
            'topics': [t['topic_metadata']['name'] for t in meta['topics_with_message_count']]}
    if fields:
        info.update(seed=int(fields['seed']), start_time=float(fields['start_time']),
                    flight_duration=float(fields['duration']))
    return info


def _parse_overrides(items) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition(':=')
        if not sep:
            raise SystemExit(f'parameter override {item!r} is not NAME:=VALUE')
        out[key] = yaml.safe_load(value)
    return out


class Processes:
    """The nodes as child processes, their output in log files; stopped with SIGINT."""

    def __init__(self, folder: Path, namespace: str):
        self.folder = folder
        self.namespace = namespace
        self.children: dict[str, subprocess.Popen] = {}
        self._logs = []
        path = os.environ.get('PYTHONPATH', '')
        self.env = {**os.environ, 'PYTHONPATH': str(PACKAGE_ROOT.parent)
                    + (os.pathsep + path if path else '')}

    def start(self, name: str, argv: list[str]) -> None:
        from ams_ros.launcher import die_with_parent

        log = open(self.folder / f'{name}.log', 'w')  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        (self.folder / f'{name}.command').write_text(' '.join(argv) + '\n')
        self.children[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True, preexec_fn=die_with_parent)

    def start_node(self, name: str, params: dict, params_file: str | None,
                   namespace: str | None) -> None:
        """Run a node as `ams launch` does: the package's YAML, then our parameters."""
        from ams_ros.launcher import config_file, node_command

        command = node_command(name, config_file(params_file) if params_file else None,
                               namespace, [f'{k}:={_ros_value(v)}' for k, v in params.items()],
                               None)
        self.start(name, command.argv)

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.children.items()
                if p.poll() is not None}

    def stop(self, timeout: float = 15.0) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            log.close()
        self._logs = []

    def tail(self, name: str, lines: int = 15) -> str:
        text = (self.folder / f'{name}.log').read_text(errors='replace').splitlines()
        return '\n'.join(text[-lines:])


def _baseline(model_path: Path, threads: int = 1):
    """Return frame -> class ids of the pretrained student (the drone's starting model)."""
    from ams_ros.drone.agent import DroneAgent, DroneConfig
    from ams_ros.drone.edge_runtime import RuntimeConfig

    agent = DroneAgent(DroneConfig(runtime=RuntimeConfig(
        providers=('CPUExecutionProvider',), use_tensorrt=False, intra_op_threads=threads)))
    agent.load_model_file(model_path.read_bytes(), 1)
    return agent, lambda rgb: agent.infer(rgb, resize_to_input=True)


def student_files(checkpoint: Path, folder: Path) -> tuple[Path, Path]:
    """Return (checkpoint .pt, drone ONNX): the ONNX beside it, else exported into folder."""
    if not checkpoint.is_file():
        raise SystemExit(f'no pretrained student at {checkpoint}: make one with\n'
                         f'  python -m ams_ros.model.pretrain --out {checkpoint} --onnx')
    onnx_path = checkpoint.with_suffix('.onnx')
    if not onnx_path.is_file():
        from ams_ros.model.pretrain import export_onnx, load_student

        onnx_path = folder / (checkpoint.stem + '.onnx')
        export_onnx(*load_student(checkpoint), onnx_path)
    return checkpoint, onnx_path


class MonitorNode:
    """The demo's ROS side: subscriptions in the drone's namespace feeding a DemoMonitor."""

    def __init__(self, monitor, namespace: str, with_images: bool, labeller=None):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from ams_msgs.msg import EdgeStatus
        from ams_ros.evaluation.demo_report import STATUS_FIELDS
        from ams_ros.ros.image_conversion import image_to_array, image_to_rgb

        self.node = rclpy.create_node('ams_demo_monitor')
        self.namespace = namespace
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)

        def stamp(msg):
            return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

        def subscribe(msg_type, name, callback, qos=reliable):
            self.node.create_subscription(msg_type, _topic(namespace, name), callback, qos)

        def on_image(msg):
            rgb = image_to_rgb(msg)
            monitor.on_image(stamp(msg), rgb)
            if labeller is not None:  # no labels topic: the teacher's labels are the truth
                monitor.on_label(stamp(msg), labeller(rgb))

        if with_images or labeller is not None:  # best effort like the drone, deeper queue
            subscribe(Image, IMAGE_TOPIC, on_image,
                      QoSProfile(depth=20, reliability=ReliabilityPolicy.BEST_EFFORT))
        subscribe(Image, LABELS_TOPIC, lambda m: monitor.on_label(stamp(m), image_to_array(m)))
        subscribe(Image, MASK_TOPIC, lambda m: monitor.on_mask(stamp(m), image_to_array(m)))
        subscribe(EdgeStatus, STATUS_TOPIC,
                  lambda m: monitor.on_status({k: getattr(m, k) for k in STATUS_FIELDS}))
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def subscribers(self, name: str) -> int:
        return self.node.count_subscribers(_topic(self.namespace, name))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=2.0)
        self.node.destroy_node()


def start_ground_and_drone(procs: Processes, checkpoint: Path, onnx_path: Path, seed: int,
                           start_time: float, flight_s: float, params: dict) -> None:
    """Start the ground (CPU settings, the flight's perfect teacher) and the drone (the student).

    params: extra parameters per node ('ground', 'drone'), applied last.
    """
    teacher = {'teacher.kind': 'synthetic', 'teacher.seed': seed,
               'teacher.start_s': float(start_time), 'teacher.duration_s': float(flight_s)}
    procs.start_node('ground', {
        'student': str(checkpoint.resolve()), **(params.get('task') or teacher),
        **params['ground']}, 'ground_cpu.yaml', None)
    procs.start_node('drone', {'model_path': str(onnx_path.resolve()), 'ort.threads': 1,
                               **params['drone']}, 'drone.yaml', procs.namespace)


def wait_until_listening(monitor_node: MonitorNode, procs: Processes, stop: threading.Event,
                         cameras: int, timeout: float) -> str | None:
    """Wait until frames may flow; return why they may not, or None.

    That is once the ground listens to the drone's batches (it finds the drone through its
    status) and `cameras` subscribers (the drone, the monitor's baseline) listen to the camera.
    """
    deadline = time.monotonic() + timeout
    while not (monitor_node.subscribers(FRAMES_TOPIC) >= 1
               and monitor_node.subscribers(IMAGE_TOPIC) >= cameras):
        if stop.is_set():
            return 'interrupted'
        if procs.exited() or time.monotonic() > deadline:
            return 'the drone or the ground did not start'
        stop.wait(0.2)
    return None


def run(args) -> int:
    """Run a parsed `ams demo` command line."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from ams_ros.evaluation.demo_report import DemoMonitor
    from ams_ros.evaluation.side_by_side import SideBySideWriter
    from ams_ros.launcher import middleware_env
    from ams_ros.model.pretrain import SMALL_CHECKPOINT
    from ams_ros.world import CLASS_NAMES, colour_table

    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.update(middleware_env(False))  # the nodes' Fast DDS profile, here too
    params = {node: _parse_overrides(getattr(args, f'{node}_param'))
              for node in ('ground', 'drone', 'camera')}
    folder = Path(args.report or f'ams_demo_{datetime.now():%Y%m%d-%H%M%S}')
    folder.mkdir(parents=True, exist_ok=True)
    task = labeller = None
    class_names, colours = CLASS_NAMES, colour_table()
    if args.task:
        task, task_file, checkpoint = demo_task(args, folder)
        params['task'] = {'task': str(task_file)}
        class_names, colours = task.class_names, colour_table(task.class_colours)
        labeller = task_labeller(task)
    checkpoint, onnx_path = student_files(
        Path(checkpoint if task else args.checkpoint or SMALL_CHECKPOINT), folder)
    namespace = '/' + args.namespace.strip('/') if args.namespace.strip('/') else ''

    seed, start_time, duration = args.seed, args.start_time, args.duration
    flight_s = duration + 60.0
    if args.bag:
        info = _bag_flight(Path(args.bag))
        if '/' + LABELS_TOPIC not in info['topics']:
            print(f'note: {args.bag} has no /{LABELS_TOPIC}: no mIoU, bandwidth and fps only')
        if 'seed' in info:
            seed, start_time, flight_s = info['seed'], info['start_time'], info['flight_duration']
        else:
            print(f'note: {args.bag} was not rendered by `ams bag record-synthetic`: the ground '
                  f'labels it with the synthetic teacher of flight {seed} from {start_time} s')
        duration = min(duration, info['duration'] / args.rate + 5.0)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    procs = Processes(folder, namespace)
    agent = monitor = monitor_node = None
    source = f'bag {args.bag}' if args.bag else (
        f'synthetic camera {args.width}x{args.height} at {args.fps:g} fps')
    if task:
        source = f'task {task.name}, video {args.video} (looped)'
    print(f'ams demo: {"" if task else f"flight {seed}, "}{source}, {duration:.0f} s; report '
          f'in {folder}', flush=True)
    try:
        baseline = None
        if not args.no_baseline:
            agent, baseline = _baseline(onnx_path)
        video = None if args.no_video else SideBySideWriter(
            folder / 'side_by_side.mp4', colours, args.fps, len(class_names))
        monitor = DemoMonitor(class_names, baseline=baseline, window_s=args.window,
                              video=video)
        monitor_node = MonitorNode(monitor, namespace, with_images=baseline is not None,
                                   labeller=labeller)
        start_ground_and_drone(procs, checkpoint, onnx_path, seed, start_time, flight_s, params)
        print('starting the ground and the drone ...', flush=True)
        cameras = 1 + (baseline is not None or labeller is not None)  # the monitor listens
        why = wait_until_listening(monitor_node, procs, stop, cameras, args.startup_timeout)
        if why:
            return _failed(procs, why)
        if task:
            procs.start_node('camera', {
                'source': str(Path(args.video).resolve()), 'loop': True, 'fps': float(args.fps),
                'width': 0, 'height': 0, 'wait_for_subscribers': cameras,
                **params['camera']}, None, namespace)
        elif args.bag:
            procs.start('bag_player', [
                sys.executable, '-m', 'ams_ros.ros.bag', 'play', args.bag,
                '--rate', str(args.rate), '--wait-for', '/' + IMAGE_TOPIC, '--remap',
                *[f'/{t}:={_topic(namespace, t)}' for t in (IMAGE_TOPIC, LABELS_TOPIC)]])
        else:
            procs.start_node('camera', {
                'seed': seed, 'start_time': float(start_time), 'duration': float(flight_s),
                'fps': float(args.fps), 'width': args.width, 'height': args.height,
                'publish_labels': True, 'wait_for_subscribers': cameras, **params['camera']},
                None, namespace)
        started = time.monotonic()
        monitor.start_clock()
        next_line = started + args.progress_period
        while not stop.wait(0.2):
            now = time.monotonic()
            ended = procs.exited()
            if ended.get('bag_player') == 0:
                stop.wait(3.0)  # the last frames' masks
                break
            if ended:
                return _failed(procs, f'{", ".join(ended)} exited', monitor, folder)
            if now - started >= duration:
                break
            if now >= next_line:
                print(monitor.live_line(), flush=True)
                next_line += args.progress_period
        monitor.stop_clock()
        if stop.is_set():
            print('interrupted: stopping the nodes and writing the report', flush=True)
    finally:
        procs.stop()
        if monitor_node is not None:
            monitor_node.close()
        rclpy.try_shutdown()
    print('scoring the remaining frames without updates ...', flush=True)
    monitor.close(timeout=args.baseline_timeout)
    if agent is not None:
        agent.close()
    summary = monitor.write_report(folder)
    print(format_summary(summary, folder))
    return 0


def demo_task(args, folder: Path):
    """Return (task, the task file the ground reads, student checkpoint) for --task.

    The ground's copy names the checkpoint as the task's student and the teacher's files by
    absolute path, so it can live in the report folder.
    """
    from ams_ros.task import TaskError, load_task

    try:
        task = load_task(args.task)
    except TaskError as e:
        raise SystemExit(f'ams demo: {e}') from e
    if task.teacher['kind'] == 'synthetic':
        raise SystemExit('ams demo: the synthetic task is the default demo: drop --task')
    if not args.video:
        raise SystemExit('ams demo: --task needs --video (the camera plays it, looped)')
    checkpoint = args.checkpoint or task.student.get('path')
    if not checkpoint:
        raise SystemExit(f'ams demo: task {task.name!r} names no student checkpoint: make one '
                         f'with `ams pretrain --task {args.task} --videos ...` and give '
                         '--checkpoint')
    data = yaml.safe_load(Path(task.source).read_text())
    for key in ('path', 'weights'):
        if key in task.teacher:
            data['teacher'][key] = task.teacher[key]  # resolved: absolute
    data['student'] = {'path': str(Path(checkpoint).resolve())}
    task_file = folder / 'task.yaml'
    task_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return task, task_file, checkpoint


def task_labeller(task):
    """Return frame -> class ids by the task's teacher (the demo's truth on a video)."""
    from ams_ros.ground.teachers import make_teacher

    teacher = make_teacher(task.teacher)
    return lambda rgb: teacher.label(rgb[None], [0.0])[0]


def _failed(procs: Processes, why: str, monitor=None, folder=None) -> int:
    procs.stop()
    print(f'ams demo: {why}', file=sys.stderr)
    for name in procs.children:
        print(f'--- {name}.log (last lines)\n{procs.tail(name)}', file=sys.stderr)
    if monitor is not None:
        monitor.close(timeout=5.0)
        monitor.write_report(folder)
    return 1


def format_summary(summary: dict, folder: Path) -> str:
    whole, late = summary['accuracy']['whole_run'], summary['accuracy']['second_half']
    model, bw, inf = summary['model'], summary['bandwidth'], summary['inference']

    def f(value, digits=3):
        return 'n/a' if value is None else f'{value:.{digits}f}'

    return '\n'.join([
        '',
        f'AMS demo summary ({summary["duration_s"]:.0f} s)',
        f'  mIoU vs true labels, same frames ({whole["frames_compared"]} of '
        f'{whole["frames"]} masks)   adapting   no updates   gain',
        f'    whole run, pooled pixels:          {f(whole["adapted_miou"])}       '
        f'{f(whole["baseline_miou"])}      {f(summary["accuracy"]["gain_whole_run"])}',
        f'    whole run, mean per frame:         {f(whole["adapted_frame_miou"])}       '
        f'{f(whole["baseline_frame_miou"])}',
        f'    second half, pooled pixels:        {f(late["adapted_miou"])}       '
        f'{f(late["baseline_miou"])}      {f(summary["accuracy"]["gain_second_half"])}',
        f'  model updates: {model["patches_applied"]} patches applied '
        f'({model["patches_rejected"]} rejected), final version {model["final_version"]}',
        f'  bandwidth: uplink {f(bw["kbps_up_mean"], 1)} kbps ({bw["bytes_up"]} B), downlink '
        f'{f(bw["kbps_down_mean"], 1)} kbps ({bw["bytes_down"]} B)',
        f'  inference: {f(inf["fps_mean"], 1)} fps, latency p50 {f(inf["latency_p50_ms"], 1)} '
        f'ms, {inf["frames_inferred"]} of {inf["frames_received"]} frames',
        f'  report: {folder}/summary.json, ' + ', '.join(
            f'{folder}/{p}' for p in summary.get('plots', [])
            + ([summary['video']['file']] if 'video' in summary else [])),
    ])


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog='ams demo',
                                               description=__doc__.split('\n')[0])
    parser.add_argument('--duration', type=float, default=180.0, help='seconds (default 180)')
    parser.add_argument('--seed', type=int, default=1003, help='flight (>= 1000: held out)')
    parser.add_argument('--start-time', type=float, default=1000.0,
                        help='stamp of the flight start (s)')
    parser.add_argument('--fps', type=float, default=5.0, help='camera frames per second')
    parser.add_argument('--width', type=int, default=256)
    parser.add_argument('--height', type=int, default=128)
    parser.add_argument('--bag', help='replay this bag instead of the synthetic camera')
    parser.add_argument('--task', help="a task file or shipped name: its teacher, classes and "
                        'student (--checkpoint, or the task\'s) on --video')
    parser.add_argument('--video', help='with --task: the clip the camera plays, looped')
    parser.add_argument('--rate', type=float, default=1.0, help='bag playback speed')
    parser.add_argument('--checkpoint', help='pretrained student .pt (default: the packaged '
                        'small student)')
    parser.add_argument('--report', help='report folder (default: ams_demo_<date-time>)')
    parser.add_argument('--no-video', action='store_true',
                        help='no side-by-side video (camera | teacher | no updates | adapting)')
    parser.add_argument('--no-baseline', action='store_true',
                        help='skip the no-update comparison (saves one core)')
    parser.add_argument('--window', type=float, default=20.0, help='live mIoU window (s)')
    parser.add_argument('--progress-period', type=float, default=5.0)
    parser.add_argument('--startup-timeout', type=float, default=180.0)
    parser.add_argument('--baseline-timeout', type=float, default=120.0,
                        help='at the end, wait this long for the baseline to catch up')
    parser.add_argument('--namespace', default='drone1', help="the drone's namespace")
    for node in ('ground', 'drone', 'camera'):
        parser.add_argument(f'--{node}-param', action='append',
                            default=[], metavar='NAME:=VALUE',
                            help=f'extra parameter for the {node} node')
    parser.set_defaults(run=run)
    return parser


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())

"""Tables and figures of an evaluation run, in the shapes of the paper's §4.2.

``write_report(results, out_dir, metadata=None)`` takes SchemeResults (or their ``to_dict()``
dicts) over one or more flights and writes into `out_dir`:

- ``tables.md`` and ``tables.txt``: Table 1's shape (per flight: mIoU (%) and Up/Down BW
  (kbps) for each scheme, then the average over flights), Table 2's (mIoU per flight and
  scheme), a detail table (pooled and per-frame mIoU, kbps, updates), the IoU of each class,
  the ablation variants, the drift sweep (each scheme's mIoU over worlds whose looks persist
  longer) when the flights span several look regions,
  Table 3 (strategy x fraction: mIoU difference to full-model training, in points) when
  the selection ablation is present, and each fleet drone's phases and waits when the fleet
  ablation is;
- ``miou_time_<flight>.png``: per-frame mIoU over time per scheme (raw and a moving average),
  with the instants each scheme's drone got an update as ticks underneath;
- ``bandwidth_<flight>.png``: uplink and downlink kbps over time (moving average, log scale);
- ``sampling_<flight>.png``: each scheme's sampling rate over time;
- ``miou_gain_cdf.png``: CDF over all frames of the per-frame mIoU gain over No Customization
  (the paper's Figure 5), with the share of frames each scheme improves;
- ``fig4_miou_vs_downlink.png``: mIoU against downlink kbps for AMS's T_update sweep and
  Just-In-Time's threshold sweep (the paper's Figure 4), when either sweep is present, and a
  table of Just-In-Time's downlink at each AMS point's accuracy (interpolated on its sweep);
- ``figures.json``: the numbers behind every table and figure.

mIoU in the tables is the pooled one (``SchemeResult.miou``: one confusion matrix per flight),
as the runner's table prints it; averages are means over flights. Main schemes are the results
without an ablation: their names carry no ``[...]`` and ``extra['ablation']`` is empty;
``ams_paper`` is AMS with the paper's profile, and ``remote_tracking@0.3s`` Remote+Tracking at
0.3 s one-way latency.
Ablation variants are recognised by ``extra['ablation']['kind']`` (the runner's ``selection``,
``t_update``, ...; ``jit_threshold`` for Just-In-Time's sweep) or else by name:
``ams[full]``, ``ams[<strategy>,<fraction>]``, ``ams[T_update=<s>]``,
``just_in_time[threshold=<t>]``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ams_ros.evaluation.core import SchemeResult
from ams_ros.metrics import class_iou

MAIN_ORDER = ('no_customization', 'one_time', 'remote_tracking', 'just_in_time', 'ams_paper',
              'ams')
DISPLAY = {'no_customization': 'No Customization', 'one_time': 'One-Time',
           'remote_tracking': 'Remote+Tracking', 'just_in_time': 'Just-In-Time',
           'ams_paper': 'AMS (paper)', 'ams': 'AMS'}
COLOURS = {'no_customization': '#7f7f7f', 'one_time': '#9467bd', 'remote_tracking': '#2ca02c',
           'just_in_time': '#ff7f0e', 'ams_paper': '#17becf', 'ams': '#1f77b4'}
# A main scheme at one setting of its link: 'remote_tracking@0.3s' (one-way latency).
_AT_LATENCY = re.compile(r'^([a-z_]+)@([0-9.]+)s$')
STRATEGY_ORDER = ('last_layers', 'first_layers', 'first_last', 'random', 'gradient_guided',
                  'gradient_magnitude', 'gauss_southwell')
STRATEGY_NAMES = {'last_layers': 'Last Layers', 'first_layers': 'First Layers',
                  'first_last': 'First&Last Layers', 'random': 'Random Selection',
                  'gradient_guided': 'Gradient-Guided', 'gradient_magnitude': 'Gradient Magnitude',
                  'gauss_southwell': 'Gauss-Southwell'}
REFERENCE = 'no_customization'
SMOOTH_S = 10.0  # moving-average window of the time plots, s (at most a tenth of the flight)

_NAME_PATTERNS = (
    (re.compile(r'^ams\[full\]$'), lambda m: {'kind': 'selection', 'strategy': 'full',
                                               'fraction': 1.0}),
    (re.compile(r'^ams\[([a-z_]+),([0-9.eE+-]+)\]$'),
     lambda m: {'kind': 'selection', 'strategy': m[1], 'fraction': float(m[2])}),
    (re.compile(r'^ams\[T_update=([0-9.eE+-]+)\]$'),
     lambda m: {'kind': 't_update', 't_update': float(m[1])}),
    (re.compile(r'^just_in_time\[threshold=([0-9.eE+-]+)\]$'),
     lambda m: {'kind': 'jit_threshold', 'threshold': float(m[1])}),
)


# -- inputs -----------------------------------------------------------------------------------

def as_result(item: SchemeResult | dict) -> SchemeResult:
    """Return a SchemeResult for a result or its ``to_dict()`` dict."""
    if isinstance(item, SchemeResult):
        return item
    if isinstance(item, dict):
        return SchemeResult.from_dict(item)
    raise TypeError(f'expected a SchemeResult or its dict, got {type(item).__name__}')


def ablation_of(result: SchemeResult) -> dict:
    """Return the result's ablation description ({} for a main scheme)."""
    ablation = result.extra.get('ablation') or {}
    if ablation.get('kind'):
        return dict(ablation)
    for pattern, parse in _NAME_PATTERNS:
        match = pattern.match(result.name)
        if match:
            return parse(match)
    if '[' in result.name:
        return {'kind': 'other'}
    return {}


def is_main(result: SchemeResult) -> bool:
    return not ablation_of(result)


def display_name(name: str) -> str:
    at = _AT_LATENCY.match(name)
    if at:
        return f'{DISPLAY.get(at[1], at[1])} ({at[2]} s)'
    return DISPLAY.get(name, name)


def _base_name(name: str) -> str:
    at = _AT_LATENCY.match(name)
    return at[1] if at else name


def _ordered(names: Iterable[str]) -> list[str]:
    names = list(dict.fromkeys(names))
    rank = {n: i for i, n in enumerate(MAIN_ORDER)}
    return sorted(names, key=lambda n: rank.get(_base_name(n), len(rank)))


def _nan(value) -> float:
    return float('nan') if value is None else float(value)


def _mean(values: Iterable[float]) -> float:
    array = np.asarray([_nan(v) for v in values], np.float64)
    array = array[~np.isnan(array)]
    return float(array.mean()) if array.size else float('nan')


def _json(value):
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    return value


# -- table data -------------------------------------------------------------------------------

def summary(result: SchemeResult) -> dict:
    """Return the table numbers of one result."""
    return {'miou': result.miou, 'mean_frame_miou': result.mean_frame_miou,
            'uplink_kbps': result.uplink_kbps, 'downlink_kbps': result.downlink_kbps,
            'uplink_bytes': int(result.uplink_bytes),
            'downlink_bytes': int(result.downlink_bytes), 'updates': len(result.updates),
            'frames': len(result.frame_miou), 'duration_s': result.duration_s}


def table1_data(results: Sequence[SchemeResult]) -> dict:
    """Per flight and scheme the summary numbers, and their means over flights."""
    flights = list(dict.fromkeys(r.flight for r in results))
    schemes = _ordered(r.name for r in results)
    cells: dict[str, dict[str, dict]] = {f: {} for f in flights}
    for r in results:
        cells[r.flight][r.name] = summary(r)
    average = {}
    for name in schemes:
        rows = [cells[f][name] for f in flights if name in cells[f]]
        average[name] = {key: _mean(row[key] for row in rows)
                         for key in ('miou', 'mean_frame_miou', 'uplink_kbps', 'downlink_kbps',
                                     'updates')}
        average[name]['flights'] = len(rows)
    return {'flights': flights, 'schemes': schemes, 'cells': cells, 'average': average}


def table3_data(results: Sequence[SchemeResult]) -> dict | None:
    """Table 3: mIoU difference (points) of each strategy and fraction to full-model training."""
    variants = [(ablation_of(r), r) for r in results]
    variants = [(a, r) for a, r in variants if a.get('kind') == 'selection']
    if not variants:
        return None
    full = {r.flight: r for a, r in variants if a.get('strategy') == 'full'}
    cells: dict[str, dict[str, list[float]]] = {}
    absolute: dict[str, dict[str, list[float]]] = {}
    bandwidth: dict[str, list[float]] = {}
    for ablation, r in variants:
        strategy = ablation.get('strategy')
        if strategy == 'full':
            continue
        key = f'{float(ablation.get("fraction")):g}'
        absolute.setdefault(strategy, {}).setdefault(key, []).append(r.miou)
        if r.flight in full:
            cells.setdefault(strategy, {}).setdefault(key, []).append(
                100 * (r.miou - full[r.flight].miou))
        bandwidth.setdefault(key, []).append(r.downlink_kbps)
    fractions = sorted(bandwidth, key=float, reverse=True)
    strategies = ([s for s in STRATEGY_ORDER if s in absolute]
                  + [s for s in absolute if s not in STRATEGY_ORDER])
    return {
        'fractions': fractions, 'strategies': strategies,
        'relative_to_full': bool(full),
        'delta_miou_points': {s: {f: _mean(cells.get(s, {}).get(f, [])) for f in fractions}
                              for s in strategies},
        'miou': {s: {f: _mean(absolute[s].get(f, [])) for f in fractions}
                 for s in strategies},
        'downlink_kbps': {f: _mean(bandwidth[f]) for f in fractions},
        'full_miou': _mean(r.miou for r in full.values()) if full else None,
        'full_downlink_kbps': _mean(r.downlink_kbps for r in full.values()) if full else None,
    }


def fig4_data(results: Sequence[SchemeResult], metadata: dict | None = None) -> dict | None:
    """Figure 4's points: (downlink kbps, mIoU %) per flight for each swept parameter value."""
    points = []
    for r in results:
        ablation = ablation_of(r)
        kind = ablation.get('kind')
        if kind == 't_update':
            points.append(('ams', 'T_update', float(ablation['t_update']), r))
        elif kind == 'jit_threshold':
            points.append(('just_in_time', 'threshold', float(ablation['threshold']), r))
    if not points:
        return None
    # The main AMS and Just-In-Time runs are operating points of the same curves.
    swept = {(scheme, r.flight, value) for scheme, _, value, r in points}
    t_update = ((metadata or {}).get('atr') or {}).get('period_min')
    for r in results:
        if not is_main(r):
            continue
        if r.name == 'ams' and t_update is not None and ('ams', r.flight,
                                                          float(t_update)) not in swept:
            points.append(('ams', 'T_update', float(t_update), r))
        threshold = (r.extra.get('config') or {}).get('threshold')
        if r.name == 'just_in_time' and threshold is not None and (
                'just_in_time', r.flight, float(threshold)) not in swept:
            points.append(('just_in_time', 'threshold', float(threshold), r))
    rows = [{'scheme': scheme, 'parameter': parameter, 'value': value, 'flight': r.flight,
             'name': r.name, 'downlink_kbps': r.downlink_kbps, 'uplink_kbps': r.uplink_kbps,
             'miou': r.miou, 'updates': len(r.updates)}
            for scheme, parameter, value, r in points]
    rows.sort(key=lambda p: (p['scheme'], p['flight'], p['value']))
    return {'points': rows, 'matched': matched_downlink(rows)}


def matched_downlink(points: Sequence[dict]) -> list[dict]:
    """Return Just-In-Time's downlink at each AMS point's accuracy on the same flight.

    This is Figure 4's "bandwidth to achieve the same accuracy". Just-In-Time's curve is its
    threshold sweep ordered by downlink, made monotone (the best mIoU reached at or below each
    bandwidth) and interpolated linearly. `jit_kbps` is None when no threshold reaches the AMS
    point's mIoU; `at_most` marks a match already at the cheapest Just-In-Time point, whose
    downlink is then an upper bound.
    """
    matched = []
    for ams in (p for p in points if p['scheme'] == 'ams'):
        curve = sorted((p['downlink_kbps'], _nan(p['miou'])) for p in points
                       if p['scheme'] == 'just_in_time' and p['flight'] == ams['flight'])
        target = _nan(ams['miou'])
        if not curve or math.isnan(target):
            continue
        kbps = np.array([c[0] for c in curve])
        best = np.maximum.accumulate(np.nan_to_num([c[1] for c in curve], nan=-1.0))
        reached = np.nonzero(best >= target)[0]
        jit_kbps, at_most = None, False
        if reached.size:
            i = int(reached[0])
            at_most = i == 0
            jit_kbps = float(kbps[0]) if at_most else float(np.interp(
                target, [best[i - 1], best[i]], [kbps[i - 1], kbps[i]]))
        ratio = (jit_kbps / ams['downlink_kbps']
                 if jit_kbps is not None and ams['downlink_kbps'] > 0 else None)
        matched.append({'flight': ams['flight'], 'name': ams['name'], 'miou': ams['miou'],
                        'ams_kbps': ams['downlink_kbps'], 'jit_kbps': jit_kbps,
                        'at_most': at_most, 'ratio': ratio})
    return matched


def gain_data(results: Sequence[SchemeResult]) -> dict | None:
    """Per-frame mIoU gain (points) of each main scheme over No Customization, all flights."""
    reference = {r.flight: r for r in results if r.name == REFERENCE}
    if not reference:
        return None
    out = {}
    for name in _ordered(r.name for r in results if is_main(r) and r.name != REFERENCE):
        gains = []
        for r in results:
            if r.name != name or r.flight not in reference:
                continue
            base = {round(s, 6): m for s, m in reference[r.flight].frame_miou}
            for stamp, miou in r.frame_miou:
                other = base.get(round(stamp, 6))
                if other is not None and not (math.isnan(miou) or math.isnan(other)):
                    gains.append(100.0 * (miou - other))
        if not gains:
            continue
        gains = np.sort(np.asarray(gains))
        out[name] = {
            'frames': int(gains.size), 'better': float(np.mean(gains > 0)),
            'not_worse': float(np.mean(gains >= 0)), 'mean_gain': float(gains.mean()),
            'median_gain': float(np.median(gains)),
            'quantiles': np.quantile(gains, np.linspace(0, 1, 101)).tolist(),
            'gains': gains.tolist()}
    return out or None


def drift_data(results: Sequence[SchemeResult]) -> dict | None:
    """Return the drift sweep: each main scheme's mIoU over worlds whose looks persist longer.

    Columns are the worlds' look regions (ams_ros.world.map), each with the mean time a look
    stayed in view on its flights; a cell is the scheme's mean mIoU over those flights. None
    unless the results span at least two regions.
    """
    worlds = [(r.extra.get('world') or {}, r) for r in results if is_main(r)]
    regions = sorted({w['look_region'] for w, _ in worlds if 'look_region' in w})
    if len(regions) < 2:
        return None
    dwell = {g: _mean(w['look_dwell_s'] for w, _ in worlds if w.get('look_region') == g
                      and w.get('look_dwell_s') is not None) for g in regions}
    schemes = _ordered(r.name for _, r in worlds)
    miou = {name: {g: _mean(r.miou for w, r in worlds
                            if r.name == name and w.get('look_region') == g)
                   for g in regions} for name in schemes}
    return {'regions': regions, 'look_dwell_s': dwell, 'schemes': schemes, 'miou': miou}


# -- text tables ------------------------------------------------------------------------------

def per_class_table(results: Sequence[SchemeResult]) -> dict:
    """Return the table of IoU per class for each flight and scheme (two classes need it)."""
    names = list(results[0].class_names)
    rows = [[r.flight, display_name(r.name)] + [_pct(v) for v in class_iou(r.confusion)]
            + [_pct(r.miou)] for r in results]
    return {'title': 'IoU per class (%)', 'header': ['Flight', 'Scheme', *names, 'mIoU'],
            'rows': rows, 'left': 2,
            'note': 'Pooled over every evaluated frame; n/a: the class is neither labelled nor '
                    'predicted.'}


def fleet_rows(results: Sequence[SchemeResult]) -> list[list[str]]:
    """Rows of the fleet table: each drone of each fleet run, with its scheduling figures."""
    rows = []
    for r in results:
        fleet = r.extra.get('fleet')
        if not fleet:
            continue
        waits = [p['waited_s'] for p in r.extra.get('phases', [])]
        rows.append([r.name, r.flight, _pct(r.miou), str(len(waits)),
                     f'{np.mean(waits):.1f}' if waits else '',
                     f'{max(waits):.1f}' if waits else '', f'{r.downlink_kbps:.1f}',
                     f'{100 * fleet["ground_busy_s"] / r.duration_s:.0f}'])
    return rows


def _pct(value) -> str:
    value = _nan(value)
    return 'n/a' if math.isnan(value) else f'{100 * value:.2f}'


def _kbps(value) -> str:
    value = _nan(value)
    if math.isnan(value):
        return 'n/a'
    return f'{value:.0f}' if abs(value) >= 100 else f'{value:.1f}'


def _bw(cell: dict | None) -> str:
    if cell is None:
        return ''
    return f'{_kbps(cell["uplink_kbps"])}/{_kbps(cell["downlink_kbps"])}'


def _markdown(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join('---' if i < left else '---:' for i in range(len(header))) + '|']
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def _plain(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    def line(cells):
        return '  '.join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    return '\n'.join([line(header), '  '.join('-' * w for w in widths)]
                     + [line(row) for row in rows])


def build_tables(results: Sequence[SchemeResult], metadata: dict | None = None) -> list[dict]:
    """Return the report's tables as {'title', 'header', 'rows', 'note'} (cells as text)."""
    tables = []
    main = [r for r in results if is_main(r)] or list(results)
    t1 = table1_data(main)
    schemes, flights = t1['schemes'], t1['flights']
    header = ['Flight', 'Metric'] + [display_name(s) for s in schemes]
    rows = []
    for flight in flights + ['Average']:
        cells = t1['average'] if flight == 'Average' else t1['cells'][flight]
        rows.append([flight, 'mIoU (%)'] + [_pct(cells[s]['miou']) if s in cells else ''
                                            for s in schemes])
        rows.append(['', 'Up/Down BW (Kbps)'] + [_bw(cells.get(s)) for s in schemes])
    tables.append({'title': 'Table 1: mIoU (%) and uplink/downlink bandwidth (kbps)',
                   'header': header, 'rows': rows, 'left': 2,
                   'note': 'mIoU pools every evaluated frame of a flight; Average is the mean '
                           'over flights.'})
    if len(flights) > 1:
        rows = [[f] + [_pct(t1['cells'][f][s]['miou']) if s in t1['cells'][f] else ''
                       for s in schemes] for f in flights]
        tables.append({'title': 'Table 2: mIoU (%) per flight', 'header':
                       ['Flight'] + [display_name(s) for s in schemes], 'rows': rows,
                       'note': ''})
    detail_header = ['Flight', 'Scheme', 'mIoU %', 'frame mIoU %', 'up kbps', 'down kbps',
                     'updates', 'frames']
    full = table1_data(results)
    detail = []
    for flight in full['flights']:
        for name in full['schemes']:
            cell = full['cells'][flight].get(name)
            if cell is None:
                continue
            detail.append([flight, name, _pct(cell['miou']), _pct(cell['mean_frame_miou']),
                           f'{cell["uplink_kbps"]:.1f}', f'{cell["downlink_kbps"]:.1f}',
                           str(cell['updates']), str(cell['frames'])])
    tables.append({'title': 'Every result', 'header': detail_header, 'rows': detail, 'left': 2,
                   'note': 'frame mIoU: mean of the per-frame mIoUs (the CDF\'s unit).'})
    tables.append(per_class_table(main))
    variants = [r for r in results if not is_main(r)]
    if variants:
        data = table1_data(variants)
        rows = [[name, str(data['average'][name]['flights']),
                 _pct(data['average'][name]['miou']),
                 f'{data["average"][name]["uplink_kbps"]:.1f}',
                 f'{data["average"][name]["downlink_kbps"]:.1f}',
                 f'{data["average"][name]["updates"]:.1f}'] for name in data['schemes']]
        tables.append({'title': 'Ablation variants (mean over flights)',
                       'header': ['Variant', 'flights', 'mIoU %', 'up kbps', 'down kbps',
                                  'updates'], 'rows': rows, 'note': ''})
    t3 = table3_data(results)
    if t3 is not None:
        values = t3['delta_miou_points'] if t3['relative_to_full'] else {
            s: {f: 100 * v for f, v in row.items()} for s, row in t3['miou'].items()}
        fmt = '{:+.2f}' if t3['relative_to_full'] else '{:.2f}'
        rows = [[STRATEGY_NAMES.get(s, s)] + [
            'n/a' if math.isnan(values[s][f]) else fmt.format(values[s][f])
            for f in t3['fractions']] for s in t3['strategies']]
        rows.append(['BW (Kbps)'] + [_kbps(t3['downlink_kbps'][f]) for f in t3['fractions']])
        if t3['full_downlink_kbps'] is not None:
            rows.append(['Full model BW (Kbps)', _kbps(t3['full_downlink_kbps'])]
                        + [''] * (len(t3['fractions']) - 1))
        tables.append({
            'title': 'Table 3: ' + ('mIoU difference to full-model training (points)'
                                    if t3['relative_to_full'] else 'mIoU (%)')
            + ' by selection strategy and fraction',
            'header': ['Strategy'] + [f'{100 * float(f):g}%' for f in t3['fractions']],
            'rows': rows, 'note': 'Mean over flights; BW: mean downlink at that fraction.'})
    fleet = fleet_rows(results)
    if fleet:
        tables.append({
            'title': 'Fleets: several drones on one ground',
            'header': ['Variant', 'Flight', 'mIoU %', 'phases', 'mean wait s', 'max wait s',
                       'down kbps', 'ground busy %'], 'rows': fleet, 'left': 2,
            'note': "wait: from a batch's arrival to the start of the phase that trains it; "
                    "ground busy: the share of the flight the one training device was busy."})
    drift = drift_data(results)
    if drift is not None:
        regions = drift['regions']
        rows = [[display_name(name)] + [_pct(drift['miou'][name][g]) for g in regions]
                for name in drift['schemes']]
        tables.append({
            'title': 'Drift sweep: mIoU (%) as looks persist longer',
            'header': ['Scheme'] + [f'{drift["look_dwell_s"][g]:.0f} s (region {g})'
                                    for g in regions], 'rows': rows,
            'note': 'Column: the mean time a look stayed in view on those flights (capped by '
                    "the flight's length), with the world's look region (districts a side "
                    'that share their looks); cell: mean mIoU over the flights.'})
    f4 = fig4_data(results, metadata)
    if f4 is not None:
        rows = [[p['flight'], display_name(p['scheme']), f'{p["parameter"]}={p["value"]:g}',
                 _pct(p['miou']), f'{p["downlink_kbps"]:.1f}', str(p['updates'])]
                for p in f4['points']]
        tables.append({'title': 'Figure 4 points: mIoU against downlink bandwidth',
                       'header': ['Flight', 'Scheme', 'parameter', 'mIoU %', 'down kbps',
                                  'updates'], 'rows': rows, 'note': '', 'left': 3})
        if f4['matched']:
            rows = [[m['flight'], m['name'], _pct(m['miou']), f'{m["ams_kbps"]:.1f}',
                     'not reached' if m['jit_kbps'] is None
                     else ('<= ' if m['at_most'] else '') + f'{m["jit_kbps"]:.1f}',
                     'n/a' if m['ratio'] is None
                     else ('<= ' if m['at_most'] else '') + f'{m["ratio"]:.1f}x']
                    for m in f4['matched']]
            tables.append({
                'title': "Just-In-Time's downlink at AMS's accuracy",
                'header': ['Flight', 'AMS', 'mIoU %', 'AMS down kbps', 'JIT down kbps',
                           'JIT / AMS'], 'rows': rows, 'left': 2,
                'note': "JIT's threshold sweep, made monotone and interpolated; 'not reached': "
                        'no threshold was as accurate as AMS.'})
    return tables


def _preamble(metadata: dict | None) -> list[tuple[str, str]]:
    if not metadata:
        return []
    keys = ('profile', 'flights', 'input_size', 'frame_size', 'fps', 'eval_fps',
            'phase_time_s', 'student', 'device', 'link')
    return [(k, json.dumps(metadata[k], default=str)) for k in keys if k in metadata]


def render_markdown(tables: list[dict], metadata: dict | None = None) -> str:
    parts = ['# Evaluation report', '']
    for key, value in _preamble(metadata):
        parts.append(f'- {key}: `{value}`')
    for table in tables:
        parts += ['', f'## {table["title"]}', '',
                  _markdown(table['header'], table['rows'], table.get('left', 1))]
        if table['note']:
            parts += ['', table['note']]
    return '\n'.join(parts) + '\n'


def render_text(tables: list[dict], metadata: dict | None = None) -> str:
    parts = []
    for key, value in _preamble(metadata):
        parts.append(f'{key}: {value}')
    for table in tables:
        parts += ['', table['title'],
                  _plain(table['header'], table['rows'], table.get('left', 1))]
        if table['note']:
            parts.append(table['note'])
    return '\n'.join(parts).lstrip('\n') + '\n'


# -- figures ----------------------------------------------------------------------------------

def _figure(width: float, height: float, rows: int = 1, **kw):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout='constrained')
    return fig, fig.subplots(rows, 1, squeeze=False, **kw)[:, 0]


def _colour(name: str, index: int) -> str:
    if name in COLOURS:
        return COLOURS[name]
    palette = ('#d62728', '#8c564b', '#e377c2', '#bcbd22', '#17becf', '#aec7e8', '#ffbb78')
    return palette[index % len(palette)]


def _moving_average(t: np.ndarray, y: np.ndarray, window: float) -> np.ndarray:
    """Mean of y over the samples within the last `window` seconds (NaNs left out)."""
    out = np.full(len(y), np.nan)
    valid = ~np.isnan(y)
    lo = 0
    for i in range(len(y)):
        while t[lo] < t[i] - window + 1e-9:
            lo += 1
        chunk = y[lo:i + 1][valid[lo:i + 1]]
        if chunk.size:
            out[i] = chunk.mean()
    return out


def _window(duration: float, share: float = 10.0) -> float:
    return max(1.0, min(SMOOTH_S, duration / share))


def _plain_log_ticks(ax, axis: str = 'y') -> None:
    """Label a log axis with plain numbers (minor ticks too when it spans under a decade)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f'{v:g}')
    low, high = ax.get_ylim() if axis == 'y' else ax.get_xlim()
    target = ax.yaxis if axis == 'y' else ax.xaxis
    target.set_major_formatter(plain)
    target.set_minor_formatter(plain if high < 10 * low else NullFormatter())


def _slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '_', text).strip('_') or 'flight'


def plot_miou_time(path: Path, flight: str, results: Sequence[SchemeResult]) -> dict:
    duration = max(r.duration_s for r in results)
    window = _window(duration)
    fig, (ax, ticks) = _figure(9, 5.5, 2, sharex=True,
                               gridspec_kw={'height_ratios': [3, 1]})
    data = {'flight': flight, 'window_s': window, 'schemes': {}}
    for i, r in enumerate(results):
        colour = _colour(r.name, i)
        t = np.asarray([s for s, _ in r.frame_miou], np.float64)
        y = np.asarray([_nan(m) for _, m in r.frame_miou], np.float64) * 100
        smooth = _moving_average(t, y, window) if t.size else y
        ax.plot(t, y, color=colour, alpha=0.25, linewidth=0.8)
        ax.plot(t, smooth, color=colour, linewidth=2,
                label=f'{display_name(r.name)} ({_pct(r.miou)}%)')
        ticks.eventplot([r.updates], lineoffsets=[len(results) - i], linelengths=0.7,
                        colors=[colour], linewidths=1.2)
        data['schemes'][r.name] = {'t': t.tolist(), 'miou': y.tolist(),
                                   'smoothed': smooth.tolist(), 'updates': list(r.updates)}
    ax.set_ylabel('mIoU (%)')
    ax.set_title(f'{flight}: per-frame mIoU (thin) and its {window:g}-s moving average')
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ticks.set_yticks(range(len(results), 0, -1),
                     [display_name(r.name) for r in results], fontsize=8)
    ticks.set_ylim(0.3, len(results) + 0.7)
    ticks.set_title('model updates applied on the drone (labels received, for Remote+Tracking)',
                    fontsize=9)
    ticks.set_xlabel('time (s)')
    ticks.set_xlim(0, duration)
    ticks.grid(axis='x', alpha=0.3)
    fig.savefig(path, dpi=110)
    return data


def _bandwidth_series(r: SchemeResult, direction: str) -> tuple[np.ndarray, np.ndarray]:
    bw = r.bandwidth or {}
    values = np.asarray(bw.get(direction) or [], np.float64)
    bin_s = float(bw.get('bin_s', 1.0))
    start = float(bw.get('start', 0.0))
    t = start + bin_s * (np.arange(values.size) + 0.5)
    return t, values * 8.0 / 1000.0 / bin_s


def plot_bandwidth(path: Path, flight: str, results: Sequence[SchemeResult]) -> dict:
    duration = max(r.duration_s for r in results)
    window = _window(duration, 2.0)  # patches come in bursts: average over several
    fig, axes = _figure(9, 6, 2, sharex=True)
    data = {'flight': flight, 'window_s': window, 'schemes': {}}
    for direction, ax in zip(('uplink', 'downlink'), axes, strict=True):
        drawn = False
        for i, r in enumerate(results):
            t, kbps = _bandwidth_series(r, direction)
            if not kbps.size:
                continue
            smooth = _moving_average(t, kbps, window)
            data['schemes'].setdefault(r.name, {})[direction] = {
                't': t.tolist(), 'kbps': kbps.tolist(), 'smoothed': smooth.tolist()}
            if not np.any(kbps > 0):
                continue
            shown = np.where(smooth > 0, smooth, np.nan)
            total = getattr(r, f'{direction}_kbps')
            ax.plot(t, shown, color=_colour(r.name, i), linewidth=1.8,
                    label=f'{display_name(r.name)} (mean {_kbps(total)} kbps)')
            drawn = True
        ax.set_ylabel(f'{direction} (kbps)')
        ax.grid(alpha=0.3, which='both')
        if drawn:
            ax.set_yscale('log')
            _plain_log_ticks(ax)
            ax.legend(loc='upper left', bbox_to_anchor=(1.01, 1.0), fontsize=8)
        else:
            ax.text(0.5, 0.5, f'no {direction} traffic', transform=ax.transAxes, ha='center')
    axes[0].set_title(f'{flight}: bandwidth, trailing {window:g}-s average (log scale)')
    axes[-1].set_xlabel('time (s)')
    axes[-1].set_xlim(0, duration)
    fig.savefig(path, dpi=110)
    return data


def plot_sampling(path: Path, flight: str, results: Sequence[SchemeResult]) -> dict:
    """One panel per scheme that samples (their rates often coincide), on a shared time axis."""
    duration = max(r.duration_s for r in results)
    sampled = [(i, r) for i, r in enumerate(results) if r.sampling]
    data = {'flight': flight, 'schemes': {}}
    if not sampled:
        fig, (ax,) = _figure(9, 2)
        ax.text(0.5, 0.5, 'no scheme sampled frames', transform=ax.transAxes, ha='center')
        ax.set_axis_off()
        fig.savefig(path, dpi=110)
        return data
    top = max(float(v) for _, r in sampled for _, v in r.sampling)
    fig, axes = _figure(9, 0.6 + 1.2 * len(sampled), len(sampled), sharex=True)
    for ax, (i, r) in zip(axes, sampled, strict=True):
        t = [float(s) for s, _ in r.sampling] + [max(duration, float(r.sampling[-1][0]))]
        rate = [float(v) for _, v in r.sampling]
        rate.append(rate[-1])
        ax.step(t, rate, where='post', color=_colour(r.name, i), linewidth=2)
        ax.set_ylim(0, 1.15 * top)
        ax.set_ylabel(display_name(r.name), fontsize=8, rotation=0, ha='right', va='center')
        ax.grid(alpha=0.3)
        data['schemes'][r.name] = {'t': t, 'rate': rate}
    axes[0].set_title(f'{flight}: frames sampled for the ground per second')
    axes[-1].set_xlabel('time (s)')
    axes[-1].set_xlim(0, duration)
    fig.savefig(path, dpi=110)
    return data


def plot_gain_cdf(path: Path, gains: dict) -> None:
    fig, (ax,) = _figure(7, 4.5)
    for i, (name, g) in enumerate(gains.items()):
        values = np.asarray(g['gains'])
        ax.step(values, np.arange(1, values.size + 1) / values.size, where='post',
                color=_colour(name, i), linewidth=2,
                label=f'{display_name(name)}: better on {100 * g["better"]:.0f}% of frames')
    ax.axvline(0, color='black', linewidth=0.8)
    ax.set_xlabel('per-frame mIoU gain over No Customization (points)')
    ax.set_ylabel('CDF over frames')
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc='lower right', fontsize=8)
    ax.set_title('Per-frame mIoU gain relative to No Customization (cf. Figure 5)')
    fig.savefig(path, dpi=110)


def plot_fig4(path: Path, data: dict) -> None:
    fig, (ax,) = _figure(7, 4.5)
    flights = list(dict.fromkeys(p['flight'] for p in data['points']))
    markers = {'ams': 'o', 'just_in_time': 's'}
    for scheme in ('ams', 'just_in_time'):
        for j, flight in enumerate(flights):
            points = [p for p in data['points'] if p['scheme'] == scheme and p['flight'] == flight
                      and p['downlink_kbps'] > 0]
            if not points:
                continue
            colour = f'C{j % 10}'
            x = [p['downlink_kbps'] for p in points]
            y = [100 * _nan(p['miou']) for p in points]
            ax.plot(x, y, linestyle='-' if scheme == 'ams' else '--', color=colour,
                    marker=markers[scheme], alpha=0.85,
                    label=f'{display_name(scheme)}, {flight}')
            for p, xi, yi in zip(points, x, y, strict=True):
                ax.annotate(f'{p["value"]:g}', (xi, yi), textcoords='offset points',
                            xytext=(4, 4), fontsize=7)
    ax.set_xscale('log')
    _plain_log_ticks(ax, 'x')
    ax.set_xlabel('downlink bandwidth (kbps, log scale)')
    ax.set_ylabel('mIoU (%)')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=7)
    ax.set_title('mIoU vs downlink: AMS T_update (s) and Just-In-Time threshold (cf. Figure 4)',
                 fontsize=9)
    fig.savefig(path, dpi=110)


# -- the report -------------------------------------------------------------------------------

def write_report(results: Sequence[SchemeResult | dict], out_dir: str | Path,
                 metadata: dict | None = None) -> dict:
    """Write the tables, figures and figures.json into `out_dir`; return what was written.

    Returns {'files': [names], 'figures': the figures.json content}.
    """
    results = [as_result(r) for r in results]
    if not results:
        raise ValueError('no results to report')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    tables = build_tables(results, metadata)
    (out / 'tables.md').write_text(render_markdown(tables, metadata))
    (out / 'tables.txt').write_text(render_text(tables, metadata))
    files += ['tables.md', 'tables.txt']
    figures: dict = {'meta': metadata or {}, 'tables': tables,
                     'table1': table1_data([r for r in results if is_main(r)] or results),
                     'per_flight': {}}
    flights = list(dict.fromkeys(r.flight for r in results))
    for flight in flights:
        chosen = [r for r in results if r.flight == flight]
        main = [r for r in chosen if is_main(r)] or chosen
        order = _ordered(r.name for r in main)
        main = sorted(main, key=lambda r: order.index(r.name))
        slug = _slug(flight)
        entry = {}
        for kind, plot in (('miou_time', plot_miou_time), ('bandwidth', plot_bandwidth),
                           ('sampling', plot_sampling)):
            name = f'{kind}_{slug}.png'
            entry[kind] = plot(out / name, flight, main)
            files.append(name)
        figures['per_flight'][flight] = entry
    gains = gain_data(results)
    if gains is not None:
        plot_gain_cdf(out / 'miou_gain_cdf.png', gains)
        files.append('miou_gain_cdf.png')
        figures['miou_gain_cdf'] = {name: {k: v for k, v in g.items()}
                                    for name, g in gains.items()}
    table3 = table3_data(results)
    if table3 is not None:
        figures['table3'] = table3
    drift = drift_data(results)
    if drift is not None:
        figures['drift'] = drift
    fig4 = fig4_data(results, metadata)
    if fig4 is not None:
        plot_fig4(out / 'fig4_miou_vs_downlink.png', fig4)
        files.append('fig4_miou_vs_downlink.png')
        figures['fig4'] = fig4
    figures = _json(figures)
    (out / 'figures.json').write_text(json.dumps(figures, indent=1, default=str))
    files.append('figures.json')
    return {'files': files, 'figures': figures}

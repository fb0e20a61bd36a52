"""The web dashboard's page and script (served by control/http.py at ``/``
and ``/dashboard.js``; nothing is loaded from elsewhere). The script polls
``/api/snapshot`` every second, computes per-bdev IOPS, MiB/s and average
latency between two snapshots and draws one SVG line chart per bdev and
figure (the last 120 s)."""

from __future__ import annotations

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>blockfabric dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 13px/1.4 system-ui, sans-serif; margin: 0; background: #f6f7f9; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: 8px 16px; display: flex; gap: 24px;
         align-items: baseline; }
header h1 { font-size: 16px; margin: 0; }
main { padding: 12px 16px; display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr));
       gap: 12px; }
section { background: #fff; border: 1px solid #d8dce3; border-radius: 4px; padding: 8px 12px; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 14px; margin: 0 0 6px 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 2px 6px; border-bottom: 1px solid #eceef2; white-space: nowrap; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
.chart { width: 300px; }
.chart .t { font-weight: 600; }
svg { background: #fbfcfd; border: 1px solid #eceef2; }
polyline { fill: none; stroke-width: 1.5; }
.err { color: #b00020; }
</style>
</head>
<body>
<header><h1>blockfabric</h1><span id="instance"></span><span id="updated">connecting...</span>
<span id="error" class="err"></span></header>
<main>
<section class="wide"><h2>Block devices</h2>
<table id="bdevs"><thead><tr><th>bdev</th><th class="n">IOPS</th><th class="n">read IOPS</th>
<th class="n">write IOPS</th><th class="n">MiB/s</th><th class="n">read lat us</th>
<th class="n">write lat us</th><th class="n">reads</th><th class="n">writes</th></tr></thead>
<tbody></tbody></table>
<div class="charts" id="charts"></div></section>
<section><h2>Reactors</h2><table id="reactors"><thead><tr><th>lcore</th><th>pid</th>
<th class="n">busy polls %</th><th class="n">CPU %</th><th class="n">connections</th><th class="n">restarts</th><th>state</th>
</tr></thead><tbody></tbody></table></section>
<section><h2>Listeners</h2><table id="listeners"><thead><tr><th>proto</th><th>address</th>
</tr></thead><tbody></tbody></table></section>
<section class="wide"><h2>NVMe-oF subsystems</h2><table id="subsystems"><thead><tr><th>NQN</th>
<th>type</th><th>listeners</th><th>namespaces</th><th>allowed hosts</th></tr></thead><tbody></tbody>
</table></section>
<section class="wide"><h2>Connected hosts</h2><table id="hosts"><thead><tr><th>proto</th>
<th>target</th><th>host</th><th>address</th><th class="n">connections</th><th>reactors</th></tr>
</thead><tbody></tbody></table></section>
<section class="wide"><h2>iSCSI target nodes</h2><table id="targets"><thead><tr><th>name</th>
<th>alias</th><th>LUNs</th><th class="n">sessions</th></tr></thead><tbody></tbody></table></section>
</main>
<script src="/dashboard.js"></script>
</body>
</html>
"""

SCRIPT = r"""'use strict';
const HISTORY = 120;
const series = {};  // bdev -> {iops: [], mibs: [], lat: []}
let prev = null;

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function fill(id, rows) {
  const tb = document.querySelector('#' + id + ' tbody');
  tb.replaceChildren(...rows.map(cells => {
    const tr = el('tr');
    for (const c of cells) {
      const td = el('td', c.attrs || {}, c.text !== undefined ? String(c.text) : String(c));
      tr.appendChild(td);
    }
    return tr;
  }));
}
const num = (v, id, d) => ({text: v.toFixed(d || 0), attrs: {class: 'n', id: id}});
const addr = a => a.traddr + ':' + a.trsvcid;

function chart(name, key, label, color) {
  const id = 'chart-' + key + '-' + name;
  let box = document.getElementById(id);
  if (!box) {
    box = el('div', {class: 'chart', id: id});
    box.appendChild(el('div', {class: 't'}, name + ' ' + label));
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('width', '300'); svg.setAttribute('height', '90');
    const pl = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    pl.setAttribute('stroke', color);
    svg.appendChild(pl);
    const mx = document.createElementNS('http://www.w3.org/2000/svg', 'text');
    mx.setAttribute('x', '4'); mx.setAttribute('y', '12'); mx.setAttribute('font-size', '10');
    svg.appendChild(mx);
    box.appendChild(svg);
    document.getElementById('charts').appendChild(box);
  }
  const data = series[name][key];
  const max = Math.max(1e-9, ...data);
  const off = HISTORY - data.length;  // the newest point at the right edge
  const pts = data.map((v, i) => (((off + i) * 300) / (HISTORY - 1)).toFixed(1) + ',' +
                                  (88 - (v / max) * 76).toFixed(1));
  box.querySelector('polyline').setAttribute('points', pts.join(' '));
  box.querySelector('text').textContent = 'max ' + max.toFixed(1) + ' now ' +
                                          (data.length ? data[data.length - 1].toFixed(1) : '0');
}

function render(s) {
  if (prev && s.time <= prev.time) return false;  // the same snapshot again (shared)
  document.getElementById('instance').textContent = 'instance ' + s.instance;
  const before = {};
  if (prev) for (const b of prev.bdevs) before[b.name] = b;
  const dt = prev ? s.time - prev.time : 0;
  const rows = [];
  for (const b of s.bdevs) {
    const p = before[b.name];
    let r = {iops: 0, riops: 0, wiops: 0, mibs: 0, rlat: 0, wlat: 0};
    if (p && dt > 0) {
      const dr = b.num_read_ops - p.num_read_ops, dw = b.num_write_ops - p.num_write_ops;
      r = {
        riops: dr / dt, wiops: dw / dt, iops: (dr + dw) / dt,
        mibs: (b.bytes_read - p.bytes_read + b.bytes_written - p.bytes_written) / dt / 1048576,
        rlat: dr > 0 ? (b.read_latency_ticks - p.read_latency_ticks) / dr / 1000 : 0,
        wlat: dw > 0 ? (b.write_latency_ticks - p.write_latency_ticks) / dw / 1000 : 0,
      };
    }
    const n = b.name;
    rows.push([n, num(r.iops, 'iops-' + n), num(r.riops, 'riops-' + n), num(r.wiops, 'wiops-' + n),
               num(r.mibs, 'mibs-' + n, 2), num(r.rlat, 'rlat-' + n, 1), num(r.wlat, 'wlat-' + n, 1),
               num(b.num_read_ops, 'reads-' + n), num(b.num_write_ops, 'writes-' + n)]);
    if (p && dt > 0) {
      const ser = series[n] = series[n] || {iops: [], mibs: [], lat: []};
      ser.iops.push(r.iops); ser.mibs.push(r.mibs);
      ser.lat.push(r.riops + r.wiops > 0 ? (r.rlat * r.riops + r.wlat * r.wiops) / (r.riops + r.wiops) : 0);
      for (const k of ['iops', 'mibs', 'lat']) if (ser[k].length > HISTORY) ser[k].shift();
      chart(n, 'iops', 'IOPS', '#2060c0');
      chart(n, 'mibs', 'MiB/s', '#20a060');
      chart(n, 'lat', 'latency us', '#c04020');
    }
  }
  fill('bdevs', rows);
  const pr = {};
  if (prev) for (const r of prev.reactors) pr[r.lcore] = r;
  fill('reactors', s.reactors.map(r => {
    const p = pr[r.lcore];
    const db = p ? r.busy - p.busy : r.busy, di = p ? r.idle - p.idle : r.idle;
    const busy = db + di > 0 ? 100 * db / (db + di) : 0;
    const cpu = p && dt > 0 ? 100 * (r.cpu_s - p.cpu_s) / dt : 0;
    return [r.lcore, r.pid, num(busy, 'busy-' + r.lcore, 1), num(cpu, 'cpu-' + r.lcore, 1),
            num(r.connections, 'conns-' + r.lcore), r.restarts || 0, r.state];
  }));
  fill('listeners', s.listeners.map(l => [l.proto, l.addr + ':' + l.port]));
  fill('subsystems', s.subsystems.map(x => [x.nqn, x.subtype,
    x.listen_addresses.map(a => a.trtype + ' ' + addr(a)).join(', '),
    x.namespaces.map(n => n.nsid + ': ' + n.bdev_name).join(', '),
    x.allow_any_host ? 'any' : x.hosts.map(h => h.nqn).join(', ')]));
  fill('hosts', s.hosts.map(h => [h.proto, h.target, h.host, h.address,
                                  num(h.connections), h.reactors]));
  const sess = {};
  for (const c of s.iscsi_connections) sess[c.target_node_name] = (sess[c.target_node_name] || 0) + 1;
  fill('targets', s.target_nodes.map(t => [t.name, t.alias_name || '',
    t.luns.map(l => l.lun_id + ': ' + l.bdev_name).join(', '), num(sess[t.name] || 0)]));
  const errs = Object.keys(s.errors || {});
  document.getElementById('error').textContent = errs.length ? 'unavailable: ' + errs.join(', ') : '';
  prev = s;
  return true;
}

let updates = 0;
async function tick() {
  try {
    const r = await fetch('/api/snapshot', {cache: 'no-store'});
    if (!r.ok) throw new Error('HTTP ' + r.status);
    if (render(await r.json())) updates += 1;  // distinct snapshots shown
    const u = document.getElementById('updated');
    u.textContent = 'updated ' + new Date().toLocaleTimeString();
    u.setAttribute('data-updates', String(updates));
  } catch (e) {
    document.getElementById('error').textContent = 'target not answering: ' + e.message;
  }
  setTimeout(tick, 1000);
}
tick();
"""

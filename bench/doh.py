#!/usr/bin/env python3
"""Cache-miss load through a DNS-over-HTTPS upstream, beside dnsdist forwarding to the same
endpoint (and our own DoT figure for reference).

shared/bench's upstream serves DoT only, so this script follows its method for one
scenario, miss-udp: unique names under `bench.` (dnsperf -n 1 over a 1M-name file, -c 4
-q 200 -t 2), the proxy pinned to CPU 1 and dnsperf to CPU 0, the proxy's CPU read from
/proc over the run, answers counted by rcode, TCP connections opened from the kernel's
ActiveOpens. The upstream is Unbound 1.17 (Debian's, built with nghttp2) answering from a
local zone on 127.0.0.54: `https-port` 443 (`/dns-query`) and `tls-port` 853, with
shared/bench's TCP_NODELAY shim preloaded when it is built (Unbound 1.17 does not set it).
Uses shared/bench's private CA (/tmp/dotbench/pki; run shared/bench/setup.sh once).

    python3 bench/doh.py --proxy target/release/dot-proxy --rounds 3 --seconds 10

Prints a markdown table: median over the rounds of each peer's answers per second,
answers per proxy CPU-second, the ratio of that to dnsdist's, and connections opened.
"""

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PKI = os.environ.get('DOTBENCH_PKI', '/tmp/dotbench/pki')
NODELAY = os.environ.get('DOTBENCH_NODELAY', '/tmp/dotbench/nodelay.so')
UP_IP = '127.0.0.54'
PORT = 5310


def active_opens():
    with open('/proc/net/snmp') as f:
        lines = [l.split() for l in f if l.startswith('Tcp:')]
    return int(lines[1][lines[0].index('ActiveOpens')])


def cpu_seconds(pid):
    """utime + stime of a process and its threads, in seconds."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
    except OSError:
        return 0.0


def wait_answer(port, name='warm.bench', limit=20):
    end = time.time() + limit
    while time.time() < end:
        out = subprocess.run(['dig', '+short', '+time=1', '+tries=1', '-p', str(port), '@127.0.0.1', name, 'A'],
                             capture_output=True, text=True).stdout
        if '192.0.2.1' in out:
            return True
        time.sleep(0.2)
    return False


def start(cmd, log, cpu=None):
    if cpu is not None:
        cmd = ['taskset', '-c', str(cpu)] + cmd
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(5)
    except Exception:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except Exception:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--proxy', default='target/release/dot-proxy')
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--seconds', type=int, default=10)
    ap.add_argument('--out', default='')
    a = ap.parse_args()
    proxy = os.path.abspath(a.proxy)
    for tool in ['unbound', 'dnsdist', 'dnsperf', 'dig', 'taskset']:
        if not shutil.which(tool):
            sys.exit(f'doh bench: {tool} missing')
    ca = os.path.join(PKI, 'ca.pem')
    if not os.path.exists(ca):
        sys.exit(f'doh bench: {ca} missing: run shared/bench/setup.sh once')
    work = tempfile.mkdtemp(prefix='dot-proxy-doh-bench.')
    # The upstream certificate of shared/bench is for 127.0.0.53 and upstream.test: the
    # name is what is verified here.
    conf = os.path.join(work, 'unbound.conf')
    with open(conf, 'w') as f:
        f.write(f'''server:
  interface: {UP_IP}@443
  interface: {UP_IP}@853
  https-port: 443
  tls-port: 853
  http-endpoint: "/dns-query"
  http-max-streams: 1000
  tls-service-key: "{PKI}/upstream.key"
  tls-service-pem: "{PKI}/upstream.pem"
  username: ""
  chroot: ""
  directory: "{work}"
  pidfile: "{work}/unbound.pid"
  use-syslog: no
  logfile: "{work}/unbound.log"
  do-daemonize: no
  num-threads: 2
  incoming-num-tcp: 1000
  access-control: 127.0.0.0/8 allow
  local-zone: "bench." redirect
  local-data: "bench. 300 IN A 192.0.2.1"
remote-control:
  control-enable: no
''')
    env = dict(os.environ)
    if os.path.exists(NODELAY):
        env['LD_PRELOAD'] = NODELAY
    log = open(os.path.join(work, 'log'), 'w')
    up = subprocess.Popen(['unbound', '-d', '-c', conf], stdout=log, stderr=subprocess.STDOUT,
                          env=env, start_new_session=True)
    names = os.path.join(work, 'names')
    rnd = random.Random(20261129)
    with open(names, 'w') as f:
        for _ in range(1_000_000):
            f.write(f'{rnd.getrandbits(64):016x}.bench A\n')
    dnsdist_conf = os.path.join(work, 'dnsdist.conf')
    with open(dnsdist_conf, 'w') as f:
        f.write(f'''setSecurityPollSuffix("")
setLocal("127.0.0.1:{PORT}")
setMaxTCPClientThreads(1)
setACL({{"127.0.0.0/8"}})
newServer({{address = "{UP_IP}:443", tls = "openssl", subjectName = "upstream.test",
  caStore = "{ca}", validateCertificates = true, dohPath = "/dns-query",
  checkName = "health.bench."}})
pc = newPacketCache(10000, {{maxTTL=86400, minTTL=0, temporaryFailureTTL=60, staleTTL=60, dontAge=false}})
getPool(""):setCache(pc)
''')
    common = ['--listen', f'127.0.0.1:{PORT}', '--tls-ca-file', ca, '--workers', '1',
              '--admin-listen', 'off', '--log-level', 'warn']
    peers = {
        'dot-proxy (DoH)': [proxy, '--upstream', f'https://{UP_IP}:443/dns-query#upstream.test'] + common,
        'dnsdist 1.7 (DoH)': ['dnsdist', '--supervised', '--disable-syslog', '-C', dnsdist_conf],
        'dot-proxy (DoT, same Unbound)': [proxy, '--upstream', f'tls://{UP_IP}:853#upstream.test'] + common,
    }
    results = {k: [] for k in peers}
    try:
        time.sleep(1)
        for r in range(a.rounds):
            order = list(peers)
            order = order[r % len(order):] + order[:r % len(order)]
            for name in order:
                p = start(peers[name], log, cpu=1)
                if not wait_answer(PORT):
                    stop(p)
                    sys.exit(f'doh bench: {name} did not answer; see {work}/log')
                opens0, cpu0 = active_opens(), cpu_seconds(p.pid)
                t0 = time.time()
                out = subprocess.run(['taskset', '-c', '0', 'dnsperf', '-s', '127.0.0.1', '-p', str(PORT),
                                      '-d', names, '-n', '1', '-c', '4', '-q', '200', '-t', '2',
                                      '-l', str(a.seconds)], capture_output=True, text=True,
                                     timeout=a.seconds + 30).stdout
                wall = time.time() - t0
                cpu, opens = cpu_seconds(p.pid) - cpu0, active_opens() - opens0
                stop(p)
                noerror = int(re.search(r'NOERROR (\d+)', out).group(1)) if 'NOERROR' in out else 0
                qps = float(re.search(r'Queries per second:\s+([\d.]+)', out).group(1))
                lost = re.search(r'Queries lost:\s+(\d+)', out)
                results[name].append({'qps': qps, 'good': noerror / a.seconds, 'cpu': cpu / wall,
                                      'per_cpu': noerror / cpu if cpu else 0, 'opens': opens,
                                      'lost': int(lost.group(1)) if lost else 0})
                print(f'round {r + 1} {name}: {noerror / a.seconds:.0f} good/s, proxy CPU {cpu / wall:.0%}, '
                      f'{noerror / cpu if cpu else 0:.0f} answers/CPU-s, {opens} connections', file=sys.stderr)
    finally:
        stop(up)
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in results.items() if v}
    ref = med['dnsdist 1.7 (DoH)']['per_cpu'] or 1
    lines = [f'miss-udp through a DoH upstream (Unbound 1.17 https-port), median of {a.rounds} rounds of {a.seconds} s',
             '', '| peer | good answers/s | proxy CPU | answers per proxy CPU-second | ratio to dnsdist (DoH) | TCP connections opened | lost |',
             '|---|---|---|---|---|---|---|']
    for k, m in med.items():
        lines.append(f"| {k} | {m['good']:.0f} | {m['cpu']:.0%} | {m['per_cpu']:.0f} | {m['per_cpu'] / ref:.2f}x | {m['opens']:.0f} | {m['lost']:.0f} |")
    text = '\n'.join(lines) + '\n'
    print(text)
    if a.out:
        with open(a.out, 'w') as f:
            f.write(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()

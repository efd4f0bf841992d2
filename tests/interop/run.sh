#!/usr/bin/env bash
# Interop test: real Unbound serving DNS-over-TLS (and DNS-over-HTTPS, as Knot Resolver does
# too) on a loopback address with a test CA as
# the upstream; dig and kdig as clients over UDP and TCP. Everything stays on 127.0.0.0/8;
# every process is stopped on exit.
set -euo pipefail

BIN=${DOT_PROXY_BIN:-${CARGO_TARGET_DIR:-target}/release/dot-proxy}
UP_IP=127.0.0.77
UP_PORT=8853
DOH_PORT=8443
PORT=${INTEROP_PORT:-5391}
ADMIN=127.0.0.1:9391
work=$(mktemp -d /tmp/dot-proxy-interop.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

for tool in unbound dig kdig openssl curl; do
  if ! command -v "$tool" >/dev/null; then
    echo "interop: $tool is missing (apt-get install unbound bind9-dnsutils knot-dnsutils openssl curl; .ci/run installs them)"
    # On a developer machine without them, skip rather than fail; CI must run it.
    if [ -n "${CI:-}" ]; then exit 1; fi
    echo "interop: SKIPPED"; exit 0
  fi
done
[ -x "$BIN" ] || { echo "interop: $BIN not built (cargo build --release -p dot-proxy)"; exit 1; }

# A private CA and a certificate for upstream.test / $UP_IP.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=interop CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=upstream.test" \
  -keyout "$work/up.key" -out "$work/up.csr" 2>/dev/null
printf 'subjectAltName=DNS:upstream.test,IP:%s\n' "$UP_IP" > "$work/ext"
openssl x509 -req -in "$work/up.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
  -extfile "$work/ext" -out "$work/up.pem" 2>/dev/null

# The server settings both Unbound instances share: in the foreground, one thread, their
# files under $work as `$1`.{pid,log}, answering loopback clients.
unbound_common() {
  cat <<CONF
  username: ""
  chroot: ""
  directory: "$work"
  pidfile: "$work/$1.pid"
  use-syslog: no
  logfile: "$work/$1.log"
  do-daemonize: no
  num-threads: 1
  access-control: 127.0.0.0/8 allow
CONF
}

cat > "$work/unbound.conf" <<CONF
server:
  interface: $UP_IP@$UP_PORT
  interface: $UP_IP@$DOH_PORT
  tls-port: $UP_PORT
  # DNS over HTTPS (Debian's Unbound is built with nghttp2).
  https-port: $DOH_PORT
  http-endpoint: "/dns-query"
  tls-service-key: "$work/up.key"
  tls-service-pem: "$work/up.pem"
$(unbound_common unbound)
  local-zone: "interop.test." static
  local-data: "www.interop.test. 300 IN A 192.0.2.10"
  local-data: "www.interop.test. 300 IN AAAA 2001:db8::10"
  local-data: "www2.interop.test. 300 IN A 192.0.2.10"
  local-data: "interop.test. 300 IN SOA ns.interop.test. admin.interop.test. 1 3600 600 86400 60"
remote-control:
  control-enable: no
CONF
unbound -d -c "$work/unbound.conf" &
pids+=($!)

wait_udp() { # addr port name
  for _ in $(seq 1 50); do
    [ -n "$(dig +short +time=1 +tries=1 @"$1" -p "$2" "$3" A 2>/dev/null)" ] && return 0
    sleep 0.2
  done
  return 1
}

"$BIN" --listen "127.0.0.1:$PORT" --upstream "tls://$UP_IP:$UP_PORT#upstream.test" \
  --tls-ca-file "$work/ca.pem" --admin-listen "$ADMIN" --log-level warn &
pids+=($!)
wait_udp 127.0.0.1 "$PORT" www.interop.test || { echo "interop: proxy did not answer"; cat "$work/unbound.log" || true; exit 1; }

fail=0
check() { # description expected actual
  if [ "$2" == "$3" ]; then echo "ok   $1"; else echo "FAIL $1: expected [$2] got [$3]"; fail=1; fi
}
check "dig UDP A" "192.0.2.10" "$(dig +short @127.0.0.1 -p "$PORT" www.interop.test A)"
check "dig TCP A" "192.0.2.10" "$(dig +short +tcp @127.0.0.1 -p "$PORT" www.interop.test A)"
check "dig UDP AAAA" "2001:db8::10" "$(dig +short @127.0.0.1 -p "$PORT" www.interop.test AAAA)"
check "dig NXDOMAIN" "NXDOMAIN" "$(dig @127.0.0.1 -p "$PORT" nope.interop.test A | sed -n 's/.*status: \([A-Z]*\).*/\1/p')"
check "kdig UDP A" "192.0.2.10" "$(kdig +short @127.0.0.1 -p "$PORT" www.interop.test A)"
check "kdig TCP A" "192.0.2.10" "$(kdig +short +tcp @127.0.0.1 -p "$PORT" www.interop.test A)"
check "kdig TCP keepalive, 3 queries on one connection" "192.0.2.10 192.0.2.10 192.0.2.10" \
  "$(kdig +short +tcp +keepopen @127.0.0.1 -p "$PORT" www.interop.test A www.interop.test A www.interop.test A | tr '\n' ' ' | sed 's/ $//')"
check "kdig DNSSEC OK bit kept" "192.0.2.10" "$(kdig +short +dnssec @127.0.0.1 -p "$PORT" www.interop.test A | head -1)"
upstream_conns=$(curl -s "http://$ADMIN/metrics" 2>/dev/null | sed -n 's/^dot_proxy_upstream_connections_opened_total{.*} \([0-9]*\).*/\1/p' | head -1)
check "one pooled TLS connection or two" "yes" "$([ "${upstream_conns:-99}" -le 2 ] && echo yes || echo "no ($upstream_conns)")"

# The same Unbound as a DNS-over-HTTPS upstream (RFC 8484 over HTTP/2).
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
"$BIN" --listen "127.0.0.1:$PORT" --upstream "https://$UP_IP:$DOH_PORT/dns-query#upstream.test" \
  --tls-ca-file "$work/ca.pem" --admin-listen "$ADMIN" --log-level warn &
pids[1]=$!
wait_udp 127.0.0.1 "$PORT" www.interop.test || { echo "interop: proxy over DoH did not answer"; cat "$work/unbound.log" || true; exit 1; }
check "DoH: dig UDP A" "192.0.2.10" "$(dig +short @127.0.0.1 -p "$PORT" www.interop.test A)"
check "DoH: dig TCP AAAA" "2001:db8::10" "$(dig +short +tcp @127.0.0.1 -p "$PORT" www.interop.test AAAA)"
check "DoH: NXDOMAIN" "NXDOMAIN" "$(dig @127.0.0.1 -p "$PORT" nope.interop.test A | sed -n 's/.*status: \([A-Z]*\).*/\1/p')"
check "DoH: kdig DNSSEC OK bit kept" "192.0.2.10" "$(kdig +short +dnssec @127.0.0.1 -p "$PORT" www2.interop.test A 2>/dev/null | head -1 || true)"
doh_queries=$(curl -s "http://$ADMIN/metrics" 2>/dev/null | sed -n 's/^dot_proxy_upstream_queries_total{.*https:.*} \([0-9]*\).*/\1/p' | head -1)
check "DoH: queries went over https" "yes" "$([ "${doh_queries:-0}" -ge 3 ] && echo yes || echo "no (${doh_queries:-none})")"
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
"$BIN" --listen "127.0.0.1:$PORT" --upstream "https://$UP_IP:$DOH_PORT/dns-query#wrong.test" \
  --tls-ca-file "$work/ca.pem" --admin-listen off --log-level error &
pids[1]=$!
sleep 0.5
check "DoH: wrong TLS name gives SERVFAIL" "SERVFAIL" "$(dig +time=3 @127.0.0.1 -p "$PORT" www.interop.test A | sed -n 's/.*status: \([A-Z]*\).*/\1/p')"

# Knot Resolver as a DNS-over-HTTPS upstream (its doh2 listener).
if command -v kresd >/dev/null; then
  KR_PORT=8444
  mkdir -p "$work/kresd"
  cat > "$work/kresd.conf" <<CONF
net.listen('$UP_IP', $KR_PORT, { kind = 'doh2' })
net.tls('$work/up.pem', '$work/up.key')
modules.load('hints > iterate')
hints['www.kresd.internal'] = '192.0.2.11'
cache.open(10*MB, 'lmdb://$work/kresd')
CONF
  kresd -n -q -c "$work/kresd.conf" "$work/kresd" > "$work/kresd.log" 2>&1 &
  pids+=($!)
  kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
  "$BIN" --listen "127.0.0.1:$PORT" --upstream "https://$UP_IP:$KR_PORT/dns-query#upstream.test" \
    --tls-ca-file "$work/ca.pem" --admin-listen off --log-level warn &
  pids[1]=$!
  # kresd answers SERVFAIL for a moment after it starts (it tries to prime the root it
  # cannot reach): wait for the hinted address itself, not just any answer.
  kr_answer() { # dig options...
    local got=""
    for _ in $(seq 1 25); do
      got=$(dig +short +time=2 +tries=1 "$@" @127.0.0.1 -p "$PORT" www.kresd.internal A)
      [ "$got" == "192.0.2.11" ] && break
      sleep 0.2
    done
    echo "$got"
  }
  if wait_udp 127.0.0.1 "$PORT" www.kresd.internal; then
    check "DoH to Knot Resolver: dig UDP A" "192.0.2.11" "$(kr_answer)"
    check "DoH to Knot Resolver: dig TCP A" "192.0.2.11" "$(kr_answer +tcp)"
  else
    echo "FAIL DoH to Knot Resolver: no answer"; cat "$work/kresd.log" || true; fail=1
  fi
else
  echo "interop: kresd missing (knot-resolver)"
  if [ -n "${CI:-}" ]; then fail=1; else echo "SKIPPED DoH to Knot Resolver"; fi
fi

# A proxy told to expect another name must refuse the upstream (SERVFAIL), never fall back.
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
"$BIN" --listen "127.0.0.1:$PORT" --upstream "tls://$UP_IP:$UP_PORT#wrong.test" \
  --tls-ca-file "$work/ca.pem" --admin-listen off --log-level error &
pids+=($!)
sleep 0.5
check "wrong TLS name gives SERVFAIL" "SERVFAIL" "$(dig +time=3 @127.0.0.1 -p "$PORT" www.interop.test A | sed -n 's/.*status: \([A-Z]*\).*/\1/p')"

# dnstap beside Unbound's own: an Unbound forwarder and the proxy, each logging to its own
# fstrm_capture, forward the same queries to the same DoT upstream; the decoded messages
# are compared field by field (tests/interop/dnstap_compare.py says which fields and why).
if command -v fstrm_capture >/dev/null && command -v dnstap-read >/dev/null; then
  FWD_PORT=5393
  TAP_PORT=5394
  cat > "$work/fwd.conf" <<CONF
server:
  interface: 127.0.0.1@$FWD_PORT
$(unbound_common fwd)
  do-not-query-localhost: no
  # test. is one of Unbound's built-in empty zones (RFC 6761): forward it like any name.
  local-zone: "test." nodefault
  tls-cert-bundle: "$work/ca.pem"
forward-zone:
  name: "."
  forward-addr: $UP_IP@$UP_PORT#upstream.test
  forward-tls-upstream: yes
dnstap:
  dnstap-enable: yes
  dnstap-socket-path: "$work/unbound-tap.sock"
  dnstap-send-identity: yes
  dnstap-identity: "tap-compare"
  dnstap-log-client-query-messages: yes
  dnstap-log-client-response-messages: yes
  dnstap-log-forwarder-query-messages: yes
  dnstap-log-forwarder-response-messages: yes
remote-control:
  control-enable: no
CONF
  cat > "$work/tap.yaml" <<CONF
dnstap:
  enabled: true
  socket: $work/proxy-tap.sock
  identity: tap-compare
  client_ipv4_prefix: 32
CONF
  fstrm_capture -t protobuf:dnstap.Dnstap -u "$work/unbound-tap.sock" -w "$work/unbound.fstrm" 2>/dev/null &
  cap_u=$!; pids+=($cap_u)
  fstrm_capture -t protobuf:dnstap.Dnstap -u "$work/proxy-tap.sock" -w "$work/proxy.fstrm" 2>/dev/null &
  cap_p=$!; pids+=($cap_p)
  for _ in $(seq 1 50); do [ -S "$work/unbound-tap.sock" ] && [ -S "$work/proxy-tap.sock" ] && break; sleep 0.1; done
  unbound -d -c "$work/fwd.conf" &
  fwd=$!; pids+=($fwd)
  "$BIN" --config "$work/tap.yaml" --listen "127.0.0.1:$TAP_PORT" --upstream "tls://$UP_IP:$UP_PORT#upstream.test" \
    --tls-ca-file "$work/ca.pem" --admin-listen 127.0.0.1:9394 --log-level warn &
  tapper=$!; pids+=($tapper)
  # Up when they answer at all (one query each: the names to compare are asked below).
  for port in "$FWD_PORT" "$TAP_PORT"; do
    for _ in $(seq 1 50); do
      dig +time=1 +tries=1 @127.0.0.1 -p "$port" interop.test SOA | grep -q 'status: NOERROR' && break
      sleep 0.2
    done
  done
  # Wait for the proxy's collector connection, then the same two lookups to each: a miss,
  # then a hit.
  for _ in $(seq 1 50); do
    curl -s http://127.0.0.1:9394/metrics | grep -q '^dot_proxy_dnstap_connected 1' && break; sleep 0.1
  done
  for port in "$FWD_PORT" "$TAP_PORT"; do
    dig +short @127.0.0.1 -p "$port" www.interop.test A >/dev/null
    dig +short @127.0.0.1 -p "$port" www.interop.test A >/dev/null
  done
  sleep 1
  # Unbound writes its log on exit; the proxy sends STOP on exit; then the captures close.
  kill "$fwd" "$tapper"; wait "$fwd" "$tapper" 2>/dev/null || true
  sleep 0.5
  kill -INT "$cap_u" "$cap_p"; wait "$cap_u" "$cap_p" 2>/dev/null || true
  dnstap-read -y "$work/unbound.fstrm" > "$work/unbound.tap.yaml" || true
  dnstap-read -y "$work/proxy.fstrm" > "$work/proxy.tap.yaml" || true
  if python3 "$(dirname "$0")/dnstap_compare.py" "$work/unbound.tap.yaml" "$work/proxy.tap.yaml"; then
    echo "ok   dnstap matches Unbound's field by field"
  else
    echo "FAIL dnstap differs from Unbound's"; fail=1
  fi
else
  echo "interop: fstrm_capture or dnstap-read missing (fstrm-bin, bind9-dnsutils)"
  if [ -n "${CI:-}" ]; then fail=1; else echo "SKIPPED dnstap comparison"; fi
fi

if [ "$fail" -ne 0 ]; then
  echo "interop: FAILED"; exit 1
fi
echo "interop: all checks passed"

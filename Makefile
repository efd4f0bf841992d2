# dot-proxy: common tasks. `make run` and `make test` are the two commands README.md opens with.
CARGO ?= cargo

.PHONY: run test unit interop docs-check k8s lint fmt build release images push-images bench bench-memory fuzz clean

## Run the proxy with the built-in defaults: 127.0.0.1:5353 (UDP+TCP) -> Cloudflare over TLS.
run:
	$(CARGO) run --release -p dot-proxy

## Every test: unit and integration (cargo), the Unbound interop test, then the docs check.
test: unit interop docs-check

unit:
	$(CARGO) test --workspace

## Real Unbound as a DoT upstream, dig and kdig as clients (needs unbound, dig, kdig).
interop: release
	bash tests/interop/run.sh

## The docs against the code: YAML examples, metrics, flags, alerts, RBAC (tests/docs/check.py).
## Uses the release binaries that interop builds (DOT_PROXY_BIN / DOT_PROXY_OPERATOR_BIN override).
docs-check:
	bash tests/docs/check.sh

## Chart, manifests, alert rules and dashboard validation (Helm SDK, kubernetes-validate, checkov, promtool).
k8s:
	bash tests/k8s/validate.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace

## The same build command the Dockerfiles run.
release:
	$(CARGO) build --release --locked -p dot-proxy -p dot-proxy-operator

## Container images, with whichever builder is installed: Docker, Podman or Buildah.
## make images REGISTRY=registry.example.com/dns TAG=0.1.0, then make push-images.
REGISTRY ?= localhost/dot-proxy
TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/dot-proxy/Chart.yaml)
BUILDER ?= $(shell for b in docker podman buildah; do command -v $$b >/dev/null 2>&1 && { echo $$b; break; }; done)
images:
	@test -n "$(BUILDER)" || { echo "make images: no docker, podman or buildah installed" >&2; exit 1; }
	$(BUILDER) $(if $(filter buildah,$(BUILDER)),bud,build) -f Dockerfile.proxy -t $(REGISTRY)/dot-proxy:$(TAG) .
	$(BUILDER) $(if $(filter buildah,$(BUILDER)),bud,build) -f Dockerfile.operator -t $(REGISTRY)/dot-proxy-operator:$(TAG) .

push-images:
	@test -n "$(BUILDER)" || { echo "make push-images: no docker, podman or buildah installed" >&2; exit 1; }
	$(BUILDER) push $(REGISTRY)/dot-proxy:$(TAG)
	$(BUILDER) push $(REGISTRY)/dot-proxy-operator:$(TAG)

## Side-by-side benchmark against Unbound, dnsdist, Stubby, kresd and hickory (see docs/benchmarks.md).
bench: release
	CANDIDATE_NAME=dot-proxy CANDIDATE_CMD="$(CURDIR)/target/release/dot-proxy --listen 127.0.0.1:{port} --upstream tls://{upstream_addr}#{tls_name} --tls-ca-file {ca} --workers 1 --admin-listen off --log-level warn" \
		bash ../shared/bench/run.sh --quick

## Peak memory with 1,000,000 names cached, beside Unbound (docs/benchmarks.md#memory).
bench-memory: release
	bash bench/cache-memory.sh

clean:
	$(CARGO) clean

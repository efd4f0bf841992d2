# dot-proxy: common tasks. `make run` and `make test` are the two commands README.md opens with.
CARGO ?= cargo

.PHONY: run test unit interop docs-check k8s lint fmt build release image images image-test push-images bench bench-memory fuzz clean

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

## The same build command the Dockerfiles and images/build.sh run.
release:
	$(CARGO) build --release --locked -p dot-proxy -p dot-proxy-operator

## Container images (images/build.sh): with whichever of Docker, Podman or Buildah has a working
## engine, from the Dockerfiles; where their base images cannot be pulled, offline from Debian
## packages and this cargo build (buildah, mmdebstrap, root). Each writes a CycloneDX SBOM to
## $(CARGO_TARGET_DIR or target)/images/. make image [IMAGE=proxy|operator]; make images
## REGISTRY=registry.example.com/dns TAG=0.1.0, then make push-images with the same values.
REGISTRY ?= localhost/dot-proxy
TAG ?= $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$$/\1/p' charts/dot-proxy/Chart.yaml)
IMAGE ?= proxy
IMAGE_ENV = REGISTRY="$(REGISTRY)" TAG="$(TAG)" CARGO="$(CARGO)" $(if $(BUILDER),BUILDER="$(BUILDER)") $(if $(OFFLINE),OFFLINE="$(OFFLINE)") $(if $(PUSH_FLAGS),PUSH_FLAGS="$(PUSH_FLAGS)")
image:
	$(IMAGE_ENV) bash images/build.sh $(IMAGE)

images:
	$(IMAGE_ENV) bash images/build.sh proxy
	$(IMAGE_ENV) bash images/build.sh operator

## The image test (tests/image/run.sh): builds both offline, then looks inside and runs them.
image-test:
	CARGO="$(CARGO)" bash tests/image/run.sh

push-images:
	$(IMAGE_ENV) bash images/push.sh

## Side-by-side benchmark against Unbound, dnsdist, Stubby, kresd and hickory (see docs/benchmarks.md).
bench: release
	CANDIDATE_NAME=dot-proxy CANDIDATE_CMD="$(CURDIR)/target/release/dot-proxy --listen 127.0.0.1:{port} --upstream tls://{upstream_addr}#{tls_name} --tls-ca-file {ca} --workers 1 --admin-listen off --log-level warn" \
		bash ../shared/bench/run.sh --quick

## Peak memory with 1,000,000 names cached, beside Unbound (docs/benchmarks.md#memory).
bench-memory: release
	bash bench/cache-memory.sh

clean:
	$(CARGO) clean

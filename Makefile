# vmha: `make run` sets everything up and starts the demo; `make test` runs every test. See README.md.
SHELL := /bin/bash
export GOTOOLCHAIN := local
export GOFLAGS := -mod=mod

BIN          := $(CURDIR)/bin
VMHA         := $(BIN)/vmha
TEMPORAL_CLI := $(BIN)/tools/temporal
# The Temporal CLI gets its own bin dir and module graph: adding it to our go.mod breaks its build.
TEMPORAL_CLI_VERSION := v1.5.1
# Static analysis tools, installed like the CLI: outside our module graph.
STATICCHECK   := $(BIN)/tools/staticcheck
WORKFLOWCHECK := $(BIN)/tools/workflowcheck
STATICCHECK_VERSION   := v0.8.2
WORKFLOWCHECK_VERSION := v0.6.0

export VMHA_BIN := $(VMHA)
export VMHA_TEMPORAL_CLI := $(TEMPORAL_CLI)

.PHONY: run stop test lint deps deps-test alerts build bench bench-lab bench-cluster soak lab-down

## run: install what is missing, build, start a 3-host lab, the embedded Temporal + Web UI + controller, create a VM
## (the demo needs no Temporal CLI: only the tests build it)
run: build
	infra/demo.sh start

## stop: stop what `make run` started (server, workers, lab)
stop:
	infra/demo.sh stop

## test: static analysis, then every test: unit, activities against libvirt's test driver and a real BMC, embedded
## Temporal, lab scenarios
test: lint alerts build $(TEMPORAL_CLI)
	go test -count=1 -timeout 28m ./...

## lint: go vet, staticcheck, and Temporal's determinism checker over the workflows
lint: deps $(STATICCHECK) $(WORKFLOWCHECK)
	@echo "lint: go vet compiles the packages, Temporal's server among them (about 5 minutes on 2 cores the first time)"
	go vet ./...
	$(STATICCHECK) ./...
	$(WORKFLOWCHECK) ./workflows/...

$(STATICCHECK):
	GOFLAGS= GOBIN=$(BIN)/tools go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

$(WORKFLOWCHECK):
	GOFLAGS= GOBIN=$(BIN)/tools go install go.temporal.io/sdk/contrib/tools/workflowcheck@$(WORKFLOWCHECK_VERSION)

## deps: the Debian packages running needs; deps-test adds those only the tests need (chromium, prometheus)
deps:
	infra/deps.sh run

deps-test: deps
	infra/deps.sh test

## alerts: promtool checks infra/monitoring's alert rules and runs their unit tests
alerts: deps-test
	promtool check rules infra/monitoring/vmha-alerts.yml
	promtool test rules infra/monitoring/vmha-alerts.test.yml

build: deps
	@[[ -x $(VMHA) ]] || echo "build: compiling bin/vmha; the first build compiles Temporal's server and its Web UI," \
		"about 5 minutes on 2 cores (later builds take seconds)" >&2
	go build -o $(VMHA) .

$(TEMPORAL_CLI):
	@echo "build: compiling the Temporal CLI for the tests ($(TEMPORAL_CLI)); it has its own copy of Temporal's" \
		"server to compile, a few minutes the first time" >&2
	GOFLAGS= GOBIN=$(BIN)/tools go install github.com/temporalio/cli/cmd/temporal@$(TEMPORAL_CLI_VERSION)

## bench: steady-state history per host and 50-VM recovery time (libvirt test driver); table in docs/benchmark.md
bench: build
	go run ./tests/bench -hosts 100,1000,5000 -window 60s -settle 3m -vms 50 -concurrency 8,16,50 -reps 3

## bench-lab: a BMC power-off, then a hang (frozen host, link down), ten times each on the lab: min/median/max seconds of each phase; tables in docs/bench-lab.md
bench-lab: build
	VMHA_BENCH_LAB=10 go test -count=1 -timeout 20m -run TestBenchLab -v ./tests/lab/

## bench-cluster: issue 9's kill-anything sequence on the lab with the production topology, three times: per fault,
## min/median/max seconds from a host's power-off to every VM running again (table in docs/production.md)
bench-cluster: build
	VMHA_BENCH_CLUSTER=3 go test -count=1 -timeout 40m -run TestLabCluster -v ./tests/lab/

## soak: the lab at vmha's defaults for 30 minutes with every core kept busy: no host may be declared dead; prints how
## often hosts were reported suspect or unreachable, next to the probe rule of before and the default one
soak: build
	VMHA_SOAK=30m go test -count=1 -timeout 45m -run TestSoak -v ./tests/lab/

lab-down:
	infra/lab/lab.sh down

# libmario: MarioTCP 0.9.9 core in Rust.
#
#   make            libmario.a and libmario.so (target/release/) + c-examples/maritcp
#                   + c-examples/mario_client + c-examples/mario_chat
#                   + c-examples/pushsrv (needs hiredis: libhiredis-dev)
#   make run        build, then run maritcp in the foreground from c-examples/
#   make test       everything above, then the whole test suite
#   make scale      hold 1,000,000 connections on this machine: several
#                   maritcp (REUSEPORT) and mario-bench hold processes, churn
#                   and sends for 2 minutes; memory per connection
#                   (benches/scale.py; SCALE_ARGS="--conns 200000"). Not in CI
#   make venv       target/venv: Python with pytest, the Prometheus client's
#                   text parser (the statistics tests parse /metrics with it)
#                   and the Python package of python/, installed from there
#   make pytest     the Python package's tests (python/tests) on libmario.so
#   make nodetest   the Node.js binding's tests (bindings/node, npm ci first)
#   make header     regenerate include/mario/mario.h after changing src/ffi/
#   make lint       cargo fmt --check + cargo clippy -D warnings + make doc
#   make doc        the crate's docs (cargo doc), warnings are errors
#   make install    PREFIX=/usr/local DESTDIR=: headers, libmario.a,
#                   libmario.so.X.Y.Z with its links, mario.pc for pkg-config
#   make uninstall  removes what make install put there
#   make clean

CARGO   ?= cargo
CC      ?= gcc
PREFIX  ?= /usr/local
LIB     := target/release/libmario.a
SO      := target/release/libmario.so
LIBDIR  ?= $(PREFIX)/lib
# The version is Cargo.toml's; the soname's number is its major (build.rs).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
MAJOR   := $(firstword $(subst ., ,$(VERSION)))
CFLAGS  ?= -std=c99 -O2 -g -Wall -Wextra -DLINUX64
# The whole link line of a MarioTCP application against libmario:
LDLIBS  := -lpthread -ldl -lm

EX      := c-examples
APP_SRC := $(EX)/mario.c $(EX)/config.c $(EX)/function.c $(EX)/collect.c
APP_HDR := $(wildcard $(EX)/*.h) include/mario/mario.h

.PHONY: all lib examples run test lint doc header install uninstall clean venv

all: lib examples

lib: $(LIB)

# cargo decides what is stale; always ask it.
$(LIB): FORCE
	$(CARGO) build --release --lib
FORCE:

examples: $(EX)/maritcp $(EX)/mario_client $(EX)/mario_chat $(EX)/pushsrv

$(EX)/maritcp: $(APP_SRC) $(APP_HDR) $(LIB)
	$(CC) $(CFLAGS) -Werror -Iinclude -o $@ $(APP_SRC) $(LIB) $(LDLIBS)

$(EX)/mario_client: $(EX)/mario_client.c
	$(CC) $(CFLAGS) -Werror -o $@ $<

# The line-based chat server (LINE framing; telnet 127.0.0.1 5555).
$(EX)/mario_chat: $(EX)/chat.c include/mario/mario.h $(LIB)
	$(CC) $(CFLAGS) -Werror -Iinclude -o $@ $< $(LIB) $(LDLIBS)

# The push server of a cluster behind HAProxy, joined by Redis pub/sub
# (tests/cluster.rs): hiredis as pkg-config finds it (Debian: libhiredis-dev).
# Recursive (=): pkg-config runs only when this program is built.
HIREDIS = $(shell pkg-config --cflags --libs hiredis)
$(EX)/pushsrv: $(EX)/pushsrv.c include/mario/mario.h $(LIB)
	@pkg-config --exists hiredis || { echo "pushsrv needs hiredis (apt-get install libhiredis-dev)"; exit 1; }
	$(CC) $(CFLAGS) -Werror -Iinclude -o $@ $< $(LIB) $(HIREDIS) $(LDLIBS)

# Build, then run the sample server in the foreground (Ctrl-C stops it).
run: all
	cd $(EX) && ./maritcp -f

# `harness`: the fuzz-corpus replay and the idle_table bench need the test
# harnesses (src/harness/), which the shipped library never contains.
test: lint all ctests venv
	$(CARGO) test --all-targets --features harness -- --test-threads=4
	$(MAKE) -s pytest
	$(MAKE) -s nodetest
	$(CARGO) test -p mario-bench -p tokio-peer
	$(CARGO) test --doc --features harness

lint: doc
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --features mario/harness -- -D warnings

# With the test harnesses first (their docs are checked too), then the
# docs a user reads (default features) last, in target/doc.
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --lib --features harness
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --lib

header:
	MARIO_WRITE_HEADER=1 $(CARGO) build --lib

# What a distribution expects: the real file libmario.so.X.Y.Z, the soname
# link libmario.so.X (what programs load), the development link
# libmario.so (what -lmario finds), and a pkg-config file.
install: all
	install -d $(DESTDIR)$(PREFIX)/include/mario $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 644 include/mario/*.h $(DESTDIR)$(PREFIX)/include/mario/
	install -m 644 $(LIB) $(DESTDIR)$(LIBDIR)/libmario.a
	install -m 755 $(SO) $(DESTDIR)$(LIBDIR)/libmario.so.$(VERSION)
	ln -sf libmario.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libmario.so.$(MAJOR)
	ln -sf libmario.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libmario.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@VERSION@|$(VERSION)|' \
		-e 's|@LIBS_PRIVATE@|$(LDLIBS)|' mario.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/mario.pc
	chmod 644 $(DESTDIR)$(LIBDIR)/pkgconfig/mario.pc

uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/include/mario/,$(notdir $(wildcard include/mario/*.h)))
	-rmdir $(DESTDIR)$(PREFIX)/include/mario
	rm -f $(DESTDIR)$(LIBDIR)/libmario.a $(DESTDIR)$(LIBDIR)/libmario.so \
		$(DESTDIR)$(LIBDIR)/libmario.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libmario.so.$(VERSION) \
		$(DESTDIR)$(LIBDIR)/pkgconfig/mario.pc

clean:
	$(CARGO) clean
	rm -f $(EX)/maritcp $(EX)/mario_client $(EX)/mario_chat $(EX)/pushsrv $(EX)/*.o

# The Prometheus client's own text parser, for tests/stats.rs (it parses
# what /metrics serves): a virtualenv of our own, never the system's Python.
VENV := target/venv
# The bench's own virtual environment (matplotlib, for BENCHMARKS.md's pictures).
BENCH_VENV := target/bench-venv
PY_TEST_DEPS := prometheus-client==0.26.0 pytest==8.3.5
venv: $(VENV)/.ready $(VENV)/.mario

# (Again when this file changes: the pinned versions are here.)
$(VENV)/.ready: Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check $(PY_TEST_DEPS)
	touch $@

# The package as a user installs it (pip install ./python): the tests
# import this copy, not the source tree's.
$(VENV)/.mario: $(VENV)/.ready python/pyproject.toml $(wildcard python/mario/*.py python/mario/*/*.py)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps --force-reinstall ./python
	touch $@

# koffi from the lockfile (npm ci), then node's own test runner.
.PHONY: nodetest
nodetest: lib
	cd bindings/node && npm ci --no-audit --no-fund --loglevel=error && \
		MARIO_LIBRARY=$(CURDIR)/$(SO) node --test test/

.PHONY: pytest
pytest: lib venv
	cd python/tests && MARIO_LIBRARY=$(CURDIR)/$(SO) ../../$(VENV)/bin/python -m pytest -q -p no:cacheprovider .

# C test programs, built with AddressSanitizer + UBSan (run by `make test`).
CTEST_DIR := target/ctests
CTEST_FLAGS := -std=c99 -O1 -g -Wall -Wextra -Werror -DLINUX64 -fsanitize=address,undefined \
	-fno-omit-frame-pointer -fno-sanitize-recover=undefined -Iinclude
.PHONY: ctests
CTESTS := $(patsubst tests/c/%.c,$(CTEST_DIR)/%,$(wildcard tests/c/*.c))
ctests: $(CTESTS) $(CTEST_DIR)/maritcp-asan $(CTEST_DIR)/mario_chat-asan $(CTEST_DIR)/pushsrv-asan

$(CTEST_DIR)/%: tests/c/%.c $(wildcard tests/c/*.h) include/mario/mario.h $(LIB)
	@mkdir -p $(CTEST_DIR)
	$(CC) $(CTEST_FLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(CTEST_DIR)/maritcp-asan: $(APP_SRC) $(APP_HDR) $(LIB)
	@mkdir -p $(CTEST_DIR)
	$(CC) $(CTEST_FLAGS) -o $@ $(APP_SRC) $(LIB) $(LDLIBS)

$(CTEST_DIR)/mario_chat-asan: $(EX)/chat.c include/mario/mario.h $(LIB)
	@mkdir -p $(CTEST_DIR)
	$(CC) $(CTEST_FLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(CTEST_DIR)/pushsrv-asan: $(EX)/pushsrv.c include/mario/mario.h $(LIB)
	@mkdir -p $(CTEST_DIR)
	$(CC) $(CTEST_FLAGS) -o $@ $< $(LIB) $(HIREDIS) $(LDLIBS)

# Benchmarks: ours (maritcp + libmario) against the tokio peer and the
# floor (a bare epoll loop), side by side, then the decoders and the cost
# of a filtered log call; rewrites BENCHMARKS.md. BENCH_ARGS=--quick for a
# short run.
.PHONY: bench
bench: all venv target/bench/logcost target/bench/floor $(BENCH_VENV)/.ready
	$(CARGO) build --release -p mario-bench -p tokio-peer
	$(CARGO) bench --no-run --bench decoders
	python3 benches/run.py $(BENCH_ARGS)

# The bench's own virtual environment: matplotlib for the pictures of
# BENCHMARKS.md (benches/plots.py), a well-kept plotting library, pinned.
$(BENCH_VENV)/.ready: Makefile
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check matplotlib==3.9.4
	touch $@

# The cost of a filtered log call (run by benches/run.py).
target/bench/logcost: benches/logcost.c include/mario/mario.h $(LIB)
	@mkdir -p target/bench
	$(CC) $(CFLAGS) -Werror -Iinclude -o $@ $< $(LIB) $(LDLIBS)

# The floor of the benchmarks (benches/floor/floor.c): the same protocol
# served by a bare epoll loop, no framework (run by benches/run.py).
target/bench/floor: benches/floor/floor.c
	@mkdir -p target/bench
	$(CC) $(CFLAGS) -Werror -o $@ $< -lpthread

# 10-minute soak against maritcp (not in CI): SOAK_SECONDS=600 by default.
.PHONY: soak fuzz sanitize loom
soak: all
	$(CARGO) build --release -p mario-bench
	python3 benches/soak.py

# A million connections held on this machine (not in CI; about 6 minutes,
# some GiB of kernel memory while it runs): benches/scale.py starts the
# servers and clients, reports, then stops them all and restores the
# sysctls it raised. SCALE_ARGS="--conns 200000 --hold-seconds 20" for less.
.PHONY: scale
scale: all
	$(CARGO) build --release -p mario-bench
	python3 benches/scale.py $(SCALE_ARGS)

# Each fuzz target for FUZZ_SECONDS (600) on nightly; minimizes the corpus.
fuzz:
	bash benches/fuzz.sh

# The Rust tests under AddressSanitizer (and ThreadSanitizer where it works).
sanitize:
	bash benches/sanitize.sh

# Exhaustive models (loom) of the lock-free paths: the mailbox and placement
# over the real code (the crate's `loom_` tests, built with loom's atomics),
# and the log ring's line-by-line model in benches/loom/.
loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom-lib $(CARGO) test --release --lib loom_ -- --test-threads=1
	cd benches/loom && $(CARGO) test --release

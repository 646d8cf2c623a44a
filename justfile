# Herald's entry points. CI runs `.ci/run`, which calls the same test command as `just test`.

# Run Herald on embedded storage (data in ./data, HTTP on 127.0.0.1:7400).
dev:
    cargo run --release -- dev

# The whole test suite (what CI runs).
test:
    cargo test --workspace

# Formatting and lints, warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks; rewrites docs/benchmarks.md and docs/images/bench-*.svg (raw JSON in target/bench).
bench:
    cargo build --release -p herald
    cargo run --release -p herald-bench -- suite --size large --report
    cargo run --release -p herald-bench -- log-append --records 1000000 --report
    cargo run --release -p herald-bench -- kafka-append --records 500000 --report

# A bigger SIGKILL crash run than the test suite's (KILLS kills).
crash KILLS="40":
    HERALD_CRASH_KILLS={{KILLS}} cargo test --release -p herald --test crash -- --nocapture

# Everything CI does, from a clean clone of this checkout.
ci:
    d=$(mktemp -d) && git clone -q . $d/main && cd $d/main && CI=true bash .ci/run

# A bigger exactly-once-visible chaos run (real processes, SIGKILLs, devices, producers).
chaos KILLS="15" SECONDS="3":
    HERALD_CHAOS_KILLS={{KILLS}} HERALD_CHAOS_SECONDS={{SECONDS}} cargo test --release -p herald --test chaos -- --nocapture

# A longer multi-process run on Kafka (SECONDS of producing before the first kill).
kafka-chaos SECONDS="20":
    HERALD_KAFKA_CHAOS_SECONDS={{SECONDS}} cargo test --release -p herald --test kafka -- --nocapture

# Long fuzzing run (release): ITERS mutated inputs per target (frames, every HTTP body and query,
# every Avro schema, cursors, times). HERALD_FUZZ_SEED=… replays a run.
fuzz ITERS="1000000":
    HERALD_FUZZ_ITERS={{ITERS}} cargo test --release -p herald-gateway --test fuzz -- --nocapture --test-threads 1

# The browser test, saving its screenshots of each inbox state into docs/images (inbox-*.png).
screenshots:
    HERALD_UPDATE_SCREENSHOTS=1 cargo test -p herald --test browser -- --nocapture

# How long a Kafka consumer-group member waits for partitions on the test broker, per setting.
kafka-startup:
    HERALD_KAFKA_STARTUP=1 cargo test -p herald-kafka --test startup -- --nocapture

# Records read per gateway with 1, 2 and 4 partition-affine gateways behind nginx, on the test
# broker (the table in docs/benchmarks.md, "Partition-affine gateways"); SECONDS of producing.
affinity SECONDS="20":
    HERALD_AFFINITY_SECONDS={{SECONDS}} cargo test --release -p herald --test cluster each_record -- --nocapture

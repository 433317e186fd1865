"""Benchmarks of the lumora-reload daemon: fan-out latency, push latency
with one device, push throughput, idle connections.

``python -m benchmarks`` (or ``benchmarks/run``) starts the daemon as a
subprocess on loopback (``twistd -n lumora-reload --in-memory``), drives it
with load-generator processes of its own (benchmarks.loadgen), measures a
trivial server sending the same bytes (benchmarks.floor) as the floor of
every figure (the throughput loop also against the same server built from
Twisted, twisted.web and Autobahn: benchmarks.framework_floor), prints
markdown tables and writes JSON. ``--quick`` runs a
reduced set in a minute or two; ``--help`` lists the knobs.

Modules: harness (processes, /proc, HTTP client, percentiles), workload
(schemas and push sequences), fanout (also the one-device latency),
throughput, idle, spy (py-spy profile), report (tables, targets), probe (how
fast the box is at the start and the end of a run).
bench_schema, bench_store, bench_pipeline, bench_reactor and soak are separate scripts;
``python -m benchmarks.compare`` measures checkouts against each other;
``python -m benchmarks.instructions`` counts a push's instructions.
"""

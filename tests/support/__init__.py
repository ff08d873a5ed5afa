"""The one set of test helpers, shared by the tests, the chaos runs (tests/chaos) and the benchmarks.

- `net`: free ports, `wait_for` (poll until a condition holds), a threaded WSGI server, a recording
  HTTP receiver;
- `procs`: real child processes (`Process`, `run_cli`), our own `redis-server` (`RedisServer`);
- `service`: the whole service's config file, and the service as processes (sandbox, serve, workers);
- `lifecycle`: that service on a test clock, for the workflow-lifecycle end-to-end tests;
- `settle`: waiting until the service has settled (every received event finished, queue empty) or the
  scheduler has gone round, instead of sleeping;
- `fhir`: the sandbox FHIR store served in the test (request log, server variants), seeding and
  searching it, its `$faults`, subscription states;
- `toml`: writing config, flow and template files;
- `fakes`: in-memory stand-ins for the Protocols around the executor and the scheduling jobs, and the
  one in-memory ContextSource of the pure planner tests;
- `plans`, `engine`: test data (hand-built plans, realistic FHIR resources, the shipped engine);
- `channels`, `openemr`, `openemr_emulator`: the outside systems we talk to (a Twilio-shaped provider,
  an OpenEMR emulator with its keys and settings).

Fixtures built on them are in tests/conftest.py. Nothing here imports the benchmarks.
"""

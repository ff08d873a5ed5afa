"""The one set of test helpers, shared by the tests, the chaos runs (tests/chaos) and the benchmarks.

- `net`: free ports, `wait_for` (poll until a condition holds), a threaded WSGI server and a recording
  HTTP receiver;
- `procs`: real child processes (`Process`), our own `redis-server` (`RedisServer`), the CLI command;
- `settle`: wait until the service has settled (queue drained, every received event finished);
- `fhir`: talking to the sandbox FHIR store over HTTP;
- `fakes`: in-memory stand-ins for the Protocols of the executor and the scheduling jobs, and the one
  in-memory ContextSource of the pure planner tests;
- `plans`, `engine`, `channels`, `openemr`, `openemr_emulator`: test data and the external systems
  we talk to (a Twilio-shaped provider, an OpenEMR emulator).

Fixtures built on them live in tests/conftest.py. Nothing here imports the benchmarks.
"""

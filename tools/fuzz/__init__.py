"""Fuzz shardspec as a hostile or careless user would, and classify every case.

    python -m tools.fuzz --seed 0 --cases 2000 --timeout 10 --json out.json
    python -m tools.fuzz --targets strategy,set --seconds 300
    python -m tools.fuzz --replay out.json        # rerun each class's reproducer, old class -> new class

Run it from a shardspec checkout (or pass --repo DIR): the seeds are that
checkout's strategies/*.yaml, examples/*.yaml and tests/fixtures/hf/*, and the
command line runs in-process (typer's CliRunner) in long-lived worker
subprocesses on 8 simulated CPU devices, so jax is imported once per worker.
The parent sends the cases, enforces the wall timeout of each and a memory
limit, and kills and restarts a worker that passes either (a catastrophic
regex holds the GIL: no alarm inside the worker could stop it).

Targets:
  strategy    mutated strategy YAML -> validate / explain / explain --format json
  set         a valid strategy with hostile --set key=value -> validate / explain
  requests    mutated request JSONL -> run strategies/attention_dp.yaml --prompts FILE
  checkpoint  a tests/fixtures/hf checkpoint with a mutated config.json (and friends) -> validate / explain --model DIR
  cli         hostile flags and paths (empty, missing, NUL, /dev/zero, FIFO, directory, symlink loop, 50 MB file ...)
  engine      random add_request / abort / step sequences on shardspec.Engine, then drained

Every case gets one class:
  ok                      exit 0, a clean result
  user_error              exit 2 / ShardspecError that says where: FILE:LINE, --set or another flag, a request field
  user_error_no_location  exit 2 / ShardspecError that does not
  rejected_valid          a user error for an input the generator made valid (e.g. a BOM, CRLF, U+2028 in a JSON string)
  internal                exit 1, any other exception, a traceback without --debug, a broken output invariant
  hang                    past --timeout (the worker is killed and restarted)
  memory                  the worker passed --max-rss-mb (killed and restarted)
  lost_request            engine: an accepted request finished zero times or more than once
  leaked_pages            engine: KV pages still in use once every request finished
Internal errors are grouped by (exception type, innermost frame in the repo), the
other failing classes by target, mutation kind and message shape; each group keeps
its shortest reproducer. Case i is a pure function of (--seed, i).

Run `python -m tools.fuzz` from the root of the checkout that holds tools/ (--repo
may name another checkout). The modules, parent side first:
  __main__    the flags and main; replay: --replay
  config      targets and their weights, classes, the strategies the cases run
  values      the hostile value lists; seeds: the checkout's seed inputs
  cases/      make_case and one generator module per target (sections, raw, encode: their helpers)
  pool        the worker processes: timeouts, the memory limit, restarts
  classify    a result -> (class, group key, detail)
  report      Tally, the text and JSON reports, reproducers
  worker      the worker process; cli_run and engine_run run one case each, with files (a case's
              files), locate (does an error line say where), traces (exceptions for grouping),
              memory (resident size) and show (short renderings, also used by the parent)
"""

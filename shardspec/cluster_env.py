"""How a process is told its cluster: the environment variables `shardspec launch` sets
(`local_cluster.py`) and `shardspec.distributed` reads, which are also the defaults of
`--coordinator`, `--num-processes` and `--process-id`. No jax here: the command line
reads them before JAX starts."""

ENV_COORDINATOR = "SHARDSPEC_COORDINATOR"  # process 0's HOST:PORT
ENV_NUM_PROCESSES = "SHARDSPEC_NUM_PROCESSES"
ENV_PROCESS_ID = "SHARDSPEC_PROCESS_ID"

"""The serving runtime: DP scheduler -> input packer -> one jitted step -> sampler.

engine.py       Engine: composes the parts below; the requests' one check (validate)
step_loop.py    schedule -> pack -> Step -> collect, failures and KV recovery
outputs.py      text, stop strings, logprobs and deltas of finished and running requests
step.py         Step: the compiled program, a value shared by every engine of a plan
scheduler.py    DPScheduler: requests, steps, and the phases of planning.py over ranks.py
packer.py       one step's device arrays, rank by rank
"""

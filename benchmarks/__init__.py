import os

# "cold" in these benchmarks is a first call that compiles in its process: jaxmlm's program store, on by default
# (in the user's cache directory), would hand a second run the first one's programs. The runs that time the store
# (run.py's "cached" column, bench_first_fit.py) turn it on beside a cache directory of their own.
os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")

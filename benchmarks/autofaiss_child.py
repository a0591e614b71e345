"""Runs inside the autofaiss virtual environment (`make bench-scale` makes `.venv-autofaiss`:
autofaiss pins numpy<2, which albat's own environment must not get). Builds an index with
`autofaiss.build_index` over a folder of .npy shards, then measures recall@k against the exact
neighbours the parent computed, and queries/s; prints one JSON line. Imports nothing of albat."""
import json
import resource
import sys
import time

import faiss
import numpy as np
from autofaiss import build_index

from peakmem import PeakAnon  # benchmarks/peakmem.py: this script's own folder is on sys.path

anon = PeakAnon().start()
embeddings, out, queries_path, exact_path, budget, available = sys.argv[1:7]
started = time.perf_counter()
build_index(embeddings=embeddings, index_path=f"{out}/autofaiss.index", index_infos_path=f"{out}/infos.json",
            max_index_memory_usage=budget, current_memory_available=available, metric_type="ip",
            nb_cores=2, verbose=30)
build = time.perf_counter() - started
index = faiss.read_index(f"{out}/autofaiss.index")
queries, exact = np.load(queries_path, allow_pickle=False), np.load(exact_path, allow_pickle=False)
k = exact.shape[1]
started = time.perf_counter()
_, found = index.search(queries, k)
search = time.perf_counter() - started
recall = float(np.mean([len(set(a[a >= 0]) & set(e[e >= 0])) / k for a, e in zip(found, exact)]))
infos = json.load(open(f"{out}/infos.json"))
print(json.dumps({"key": infos.get("index_key"), "build_seconds": build, "recall": recall,
                  "queries_per_s": len(queries) / search, "index_bytes": infos.get("size in bytes"),
                  "params": infos.get("index_param"),
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "peak_anon_kib": anon.stop()}))

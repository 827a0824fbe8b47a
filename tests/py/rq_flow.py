"""RQ (the Python job queue) through shardis with its default key names.

Usage: rq_flow.py PORT on|off [OTHER_QUEUE]

on: the proxy runs with [crossshard] transactions = "per-shard" and
blocking = "all-shards": jobs are enqueued on "default" and OTHER_QUEUE (whose
list lives on another shard), a worker in burst mode runs them and their
results are read back; then a worker started first (`rq worker`, blocked in
BLPOP over both queues' lists) gets jobs enqueued while it waits. off:
enqueueing a job whose hash is on another shard than its queue fails with a
CROSSSHARD error that names the setting.
"""

import os
import subprocess
import sys
import time

import redis
from rq import Queue, Worker

import rq_jobs

port, mode = int(sys.argv[1]), sys.argv[2]
other_name = sys.argv[3] if len(sys.argv) > 3 else "other"
r = redis.Redis(host="127.0.0.1", port=port)
q = Queue("default", connection=r)

if mode == "off":
    # A job's hash lands on a random shard (its id is random): when it
    # shares the queue's shard the transaction is on one shard and goes
    # through, so enqueue until one is refused (1 in 3 go through with 3
    # shards when the queue's keys share a shard).
    for _ in range(30):
        try:
            q.enqueue(rq_jobs.add, 2, 3)
        except redis.exceptions.ResponseError as e:
            assert "CROSSSHARD" in str(e) and 'crossshard.transactions = "per-shard"' in str(e), e
            print("refused:", e)
            sys.exit(0)
    sys.exit("30 enqueues went through with the setting off")

jobs = [q.enqueue(rq_jobs.add, i, 10) for i in range(3)]
# A second queue, so the worker's BLPOP spans shards.
other = Queue(other_name, connection=r)
jobs.append(other.enqueue(rq_jobs.add, 100, 1))
assert q.count == 3, q.count
w = Worker([q, other], connection=r)
w.work(burst=True)
for i, job in enumerate(jobs):
    job.refresh()
    want = i + 10 if i < 3 else 101
    assert job.get_status() == "finished", (job.id, job.get_status(), job.exc_info)
    assert job.return_value() == want, (job.id, job.return_value())
print("burst ok:", [j.return_value() for j in jobs])

# A worker that waits: BLPOP over both queues' lists, on two shards.
here = os.path.dirname(os.path.abspath(__file__))
worker = subprocess.Popen(
    [sys.executable, "-m", "rq.cli", "worker", "--url", f"redis://127.0.0.1:{port}/", "--max-jobs", "2", "--path", here, "default", other_name],
    cwd=here,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
)
try:
    # Wait until it is blocked (a BLPOP held on the shards), then enqueue.
    deadline = time.time() + 20
    while time.time() < deadline and int(r.info("clients").get("blocked_clients", 0)) < 1:
        time.sleep(0.05)
    assert int(r.info("clients").get("blocked_clients", 0)) >= 1, "the worker never blocked"
    later = [other.enqueue(rq_jobs.add, 20, 2)]
    time.sleep(0.3)
    later.append(q.enqueue(rq_jobs.add, 30, 3))
    out, _ = worker.communicate(timeout=30)
finally:
    if worker.poll() is None:
        worker.kill()
assert worker.returncode == 0, out
for job, want in zip(later, [22, 33]):
    job.refresh()
    assert job.get_status() == "finished", (job.id, job.get_status(), job.exc_info, out)
    assert job.return_value() == want, (job.id, job.return_value())
print("ok:", [j.return_value() for j in jobs + later])

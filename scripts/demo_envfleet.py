"""`make demo-envfleet`: envfleet (screenshots through a buffer on a local redis-server), a scripted agent through MiniWoB tasks.

Prints one line per episode and saves every screenshot the agent saw under
runs/demo-envfleet/ (`make demo-envfleet`; `make demo` is the training demo).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

from asyncwebrl.common.grpcclient import channel
from asyncwebrl.common.localstack import RedisServer, ServiceProcess
from asyncwebrl.envfleet import scripted
from asyncwebrl.v1 import env_pb2, env_pb2_grpc

TOKEN = "demo-token"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="episodes per task")
    parser.add_argument("--out", default="runs/demo-envfleet", help="where screenshots go")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="asyncwebrl-demo-") as tmp:
        redis = RedisServer(pathlib.Path(tmp))
        # envfleet has no Redis of its own: it stores screenshots through the buffer's PutBlobs.
        buffer = ServiceProcess(
            "buffer",
            ["--redis-url", redis.url, "--log-format", "text", "--log-level", "WARNING"],
            {"ASYNCWEBRL_AUTH_TOKEN": TOKEN, "ASYNCWEBRL_REDIS_PASSWORD": redis.password},
            pathlib.Path(tmp) / "buffer.log",
        )
        envfleet = None
        try:
            buffer.wait_ready()
            envfleet = ServiceProcess(
                "envfleet",
                ["--buffer-target", buffer.target, "--log-format", "text", "--log-level", "WARNING"],
                {"ASYNCWEBRL_AUTH_TOKEN": TOKEN},
                pathlib.Path(tmp) / "envfleet.log",
            )
            print(f"envfleet: starting (buffer on {buffer.target}, redis on port {redis.port}) ...", flush=True)
            envfleet.wait_ready()
            stub = env_pb2_grpc.EnvServiceStub(channel(envfleet.target, TOKEN))
            tasks = stub.ListTasks(env_pb2.ListTasksRequest(source="miniwob"))
            print(f"envfleet: serving {len(tasks.tasks)} MiniWoB tasks on {envfleet.target}\n")
            blobs = redis.client()
            print(f"{'task':<24} {'seed':>4} {'steps':>5} {'reward':>6}  instruction")
            solved = total = 0
            started = time.perf_counter()
            for task in scripted.SOLVABLE:
                for seed in range(args.seeds):
                    ep = scripted.run_episode(stub, task, seed)
                    total += 1
                    solved += ep.reward == 1.0
                    print(f"{task:<24} {seed:>4} {ep.steps:>5} {ep.reward:>6.1f}  {ep.instruction[:60]}", flush=True)
                    for i, sha in enumerate(ep.screenshots):
                        data = blobs.hget(f"asyncwebrl:job:default:blob:{sha}", "data")
                        (out / f"{task.split('/')[1]}-seed{seed}-step{i}.jpg").write_bytes(data)
            stats = stub.Stats(env_pb2.StatsRequest())
            print(f"\nsolved {solved}/{total} episodes in {time.perf_counter() - started:.1f}s; "
                  f"{stats.steps_total} steps; screenshots in {out}/")
            return 0 if solved == total else 1
        except Exception:
            print((envfleet or buffer).logs()[-4000:], file=sys.stderr)
            raise
        finally:
            if envfleet is not None:
                envfleet.stop()
            buffer.stop()
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())

"""Submit many Dockerfiles at once and collect their results, with httpx's async client.

    python examples/submit_many.py Dockerfile.a Dockerfile.b …    # DOCKGUARD_URL, else :8000

Prints one line per Dockerfile (its job, verdict and perf) once all have ended; exits 0 only
when every job succeeded."""

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx

URL = os.environ.get("DOCKGUARD_URL", "http://127.0.0.1:8000")
TERMINAL = {"succeeded", "failed", "rejected", "cancelled"}


async def run_one(client: httpx.AsyncClient, path: str, body: bytes) -> dict[str, Any]:
    while True:
        response = await client.post(
            "/v1/jobs", content=body, headers={"Content-Type": "text/plain"}
        )
        if response.status_code != 429:
            break
        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))  # queue full
    if response.status_code != 202:
        return {"id": "-", "status": "refused", "error": response.json()}
    job: dict[str, Any] = response.json()
    while job["status"] not in TERMINAL:
        response = await client.get(f"/v1/jobs/{job['id']}", params={"wait": 60})
        job = response.raise_for_status().json()
    return job


async def main(paths: list[str]) -> int:
    async with httpx.AsyncClient(base_url=URL, timeout=70) as client:
        bodies = [Path(path).read_bytes() for path in paths]
        jobs = await asyncio.gather(
            *(run_one(client, *pair) for pair in zip(paths, bodies, strict=True))
        )
    for path, job in zip(paths, jobs, strict=True):
        perf = (job.get("result") or {}).get("perf")
        code = (job.get("error") or {}).get("code", "")
        print(f"{path}\t{job['id']}\t{job['status']}\t{perf if perf is not None else code}")
    return 0 if all(job["status"] == "succeeded" for job in jobs) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))

"""Submit a Dockerfile and wait for its verdict, with httpx alone.

    python examples/submit_and_wait.py path/to/Dockerfile    # DOCKGUARD_URL, else 127.0.0.1:8000

Prints the verdict and the perf value; exits 0 only when the job succeeded."""

import os
import sys

import httpx

URL = os.environ.get("DOCKGUARD_URL", "http://127.0.0.1:8000")
TERMINAL = {"succeeded", "failed", "rejected", "cancelled"}


def main(path: str) -> int:
    with open(path, "rb") as file, httpx.Client(base_url=URL, timeout=70) as client:
        response = client.post(
            "/v1/jobs", content=file.read(), headers={"Content-Type": "text/plain"}
        )
        if response.status_code != 202:  # a problem document: code and detail
            problem = response.json()
            print(f"refused: {problem['code']}: {problem['detail']}", file=sys.stderr)
            return 2
        job = response.json()
        while job["status"] not in TERMINAL:  # long-poll: answers as soon as the job ends
            job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 60}).raise_for_status().json()
    if job["status"] == "succeeded":
        print(f"{job['id']} succeeded: perf = {job['result']['perf']}")
        return 0
    print(f"{job['id']} {job['status']}: {job['error']['code']}: {job['error']['message']}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

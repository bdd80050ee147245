"""The bare endpoint the feedback benchmark compares against: the same framework (FastAPI), served
by uvicorn the same way as the service (``uvicorn.run``, ``log_config=None``, the same logging
set-up), doing nothing but parse the JSON body and answer 202."""

from __future__ import annotations

import argparse
from typing import Annotated, Any

from fastapi import Body, FastAPI

app = FastAPI(title="bare")


@app.post("/v1/submissions", status_code=202)
async def submit(body: Annotated[Any, Body()]) -> dict[str, Any]:
    return {"submission_id": body.get("submission_id") if isinstance(body, dict) else None, "status": "created"}


def main() -> None:
    import uvicorn

    from shared.logging import configure_logging

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args()
    configure_logging("bare", args.log_level)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_config=None)


if __name__ == "__main__":
    main()

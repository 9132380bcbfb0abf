"""The reference for ingest speed: a FastAPI endpoint that does nothing, served the same way."""

from fastapi import FastAPI

app = FastAPI()


@app.post("/api/v1/whatsapp/send")
async def send() -> dict[str, str]:
    return {"messageId": "00000000-0000-0000-0000-000000000000"}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}

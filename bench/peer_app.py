"""The peer way for bench/load.py: a bare Chainlit app that streams the model's answer to each message.

Password login like ours, no data layer, no routing, no repository: the least a Chainlit app on the same
model endpoint does, so the benchmark can say what our app adds on top.
"""
import os

import chainlit as cl
from openai import AsyncOpenAI

SYSTEM = "You answer questions about a codebase."  # the scripted model's answer lane keys on it
client = AsyncOpenAI()


@cl.password_auth_callback
async def login(username: str, password: str):
    name, _, expected = os.environ["PEER_USER"].partition(":")
    return cl.User(identifier=username) if (username, password) == (name, expected) else None


@cl.on_message
async def on_message(message: cl.Message):
    reply = cl.Message(content="")
    stream = await client.chat.completions.create(
        model=os.environ.get("ASSISTANT_MODEL", "scripted-model"), stream=True,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": message.content}])
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            await reply.stream_token(chunk.choices[0].delta.content)
    await reply.send()

r"""A live page to talk to an avatar: type sentences, hear and see it speak them as they stream.

  python -m avflow_jax.serve --workdir runs/stream --t2t-workdir runs/t2t   # then open the URL

Every page (or program) that connects to `ws://HOST:PORT/stream` gets its own conversation
(`inference/conversation.py`): the avatar listens (silence tokens, the recorded participant of
`--participant` or a still one) until a sentence arrives, speaks it, and listens again. The
server keeps each conversation's output `--buffer-ms` ahead of real time, so what is typed is
heard after the model's look-ahead plus that buffer. All conversations share one compute thread.

The endpoint speaks JSON text messages (the README lists them):
  -> {"type": "say", "text": "..."}       a sentence (needs --t2t-workdir)
  -> {"type": "tokens", "tokens": [[29 floats], ...], "text": "..."}   token frames of one turn
  <- {"type": "hello", ...}   sample rate, fps, look-ahead, chunk size, whether text works
  <- {"type": "queued", "id", "text", "seconds", "starts_at"}   a turn accepted
  <- {"type": "chunk", "audio_start", "audio", "participant_audio", "video_start", "frames",
      "head", "rig", "events", "compute_ms"}   audio: base64 little-endian int16 PCM;
      frames: base64 JPEGs at 30 fps (none with ?frames=0); events: speaking / listening
  <- {"type": "error", "message"}   bad input; the conversation goes on
"""

import argparse
import asyncio
import base64
import concurrent.futures
import json
import logging as py_logging
import math
import os
import sys
import threading
import time
from typing import Optional

from absl import logging
import numpy as np

from avflow_jax.core import audio as audio_lib
from avflow_jax.core import cli
from avflow_jax.core import constants as C
from avflow_jax.core.errors import AvatarError
from avflow_jax.core.errors import InputError
from avflow_jax.inference import avatar as avatar_lib
from avflow_jax.inference import conversation as conversation_lib
from avflow_jax.inference import live_video
from avflow_jax.inference import text_tokens
from avflow_jax.inference import vocoder as vocoder_lib

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "live.html")
MAX_MESSAGE_BYTES = 4 << 20  # A turn of token frames: 20 s of 29 floats as JSON fits.


def make_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m avflow_jax.serve",
                         description="A live page (and WebSocket endpoint) streaming an avatar.")
  p.add_argument("--workdir", required=True, help="AV training workdir (windowed attention)")
  p.add_argument("--t2t-workdir", help="text-to-tokens workdir: lets the page take typed text")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on")
  p.add_argument("--port", type=int, default=8765, help="port (0: any free one, printed)")
  p.add_argument("--vocoder-weights", help="BigVGAN safetensors (default: Griffin-Lim)")
  p.add_argument("--participant", help="(T, 87) recorded participant features .npy on the mel "
                 "grid, played from the start of each conversation (dyadic avatars)")
  p.add_argument("--participant-audio", help="the recording's .wav, played beside the avatar")
  p.add_argument("--seed", type=int, default=0, help="noise seed")
  p.add_argument("--steps", type=int, default=8, help="Euler steps")
  p.add_argument("--lag-frames", type=int, default=None,
                 help="frames each Euler step lags the one before (default: ΣR, exact mode; "
                      "less: the low-latency mode)")
  p.add_argument("--chunk-frames", type=int, default=32, help="frames per network evaluation")
  p.add_argument("--vocoder-chunk-frames", type=int, default=16,
                 help="mel frames per vocoder call")
  p.add_argument("--vocoder-context-frames", type=int, default=None,
                 help="mel frames of context each side of a vocoder call (default: the "
                      f"vocoder's, {vocoder_lib.GRIFFIN_LIM_CONTEXT_FRAMES} Griffin-Lim, "
                      f"{vocoder_lib.BIGVGAN_CONTEXT_FRAMES} BigVGAN)")
  p.add_argument("--vocoder-crossfade-frames", type=int, default=None,
                 help="frames two Griffin-Lim chunks overlap by (default "
                      f"{vocoder_lib.GRIFFIN_LIM_CROSSFADE_FRAMES})")
  p.add_argument("--buffer-ms", type=float, default=250.0,
                 help="how far the output is kept ahead of real time (smooths compute jitter)")
  p.add_argument("--which", choices=("ema", "params"), default="ema", help="weights to use")
  p.add_argument("--verbose", action="store_true", help="show library logs")
  return p


def _b64_pcm(x: Optional[np.ndarray]) -> Optional[str]:
  if x is None:
    return None
  return base64.b64encode(audio_lib.to_int16(x).astype("<i2").tobytes()).decode("ascii")


def _rounded(x: Optional[np.ndarray]):
  return None if x is None else np.round(np.asarray(x, np.float64), 4).tolist()


class Server:
  """The loaded avatar, the options every conversation is built with, and the compute thread."""

  def __init__(self, avatar, args, t2t=None, participant=None, participant_audio=None):
    self.avatar, self.args, self.t2t = avatar, args, t2t
    self.participant, self.participant_audio = participant, participant_audio
    # One model call at a time: XLA on the CPU already uses every core for one.
    self.compute = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="avflow-model")
    self.sockets = set()  # The open conversations' WebSockets.
    self.started = time.time()
    head = avatar.loaded.params["stats"]["head"]
    self.head_stats = (np.asarray(head[0]), np.asarray(head[1]))

  @property
  def sessions(self) -> int:
    """Conversations open now."""
    return len(self.sockets)

  def text_to_tokens(self, text: str) -> np.ndarray:
    return text_tokens.text_to_tokens(text, self.t2t, seed=self.args.seed)

  def new_conversation(self) -> conversation_lib.Conversation:
    a = self.args
    return conversation_lib.Conversation(
        self.avatar, seed=a.seed, num_steps=a.steps, chunk_frames=a.chunk_frames,
        lag_frames=a.lag_frames, vocoder_chunk_frames=a.vocoder_chunk_frames,
        vocoder_context_frames=a.vocoder_context_frames,
        vocoder_crossfade_frames=a.vocoder_crossfade_frames,
        text_to_tokens=self.text_to_tokens if self.t2t is not None else None,
        participant=self.participant, participant_audio=self.participant_audio)

  def warmup(self) -> float:
    """Compiles what a conversation runs (sampler windows, vocoder, text-to-tokens) up front,
    so the first page is not kept waiting; returns the seconds it took."""
    t = time.perf_counter()
    conv = self.new_conversation()
    if self.t2t is not None:
      conv.say("Hello there, how are you?")
    painter = live_video.FramePainter(*self.head_stats)
    while conv.audio_frames_out < 2 * conv.vocoder.chunk:
      out = conv.advance(self.args.chunk_frames)
      painter.paint(out["head"], face_channels=out["rig"], face_codes=out["face"])
    return time.perf_counter() - t

  def hello(self, conv) -> dict:
    return {"type": "hello", "sample_rate": C.SAMPLE_RATE, "fps": C.VIDEO_FPS,
            "frame_rate": C.FRAME_RATE, "lookahead_frames": conv.lookahead_frames,
            "lookahead_ms": 1000.0 * conv.lookahead_frames / C.FRAME_RATE,
            "model_lookahead_ms": 1000.0 * conv.sampler.lookahead_frames / C.FRAME_RATE,
            "buffer_ms": self.args.buffer_ms, "exact": conv.sampler.exact,
            "text": conv.text_enabled, "dyadic": conv.dyadic,
            "participant": self.participant is not None,
            "rig": self.avatar.face_rig is not None, "workdir": self.avatar.loaded.workdir}


class Session:
  """One connection: its conversation, paced against the wall clock, and its messages."""

  def __init__(self, server: Server, ws, draw_frames: bool):
    self.server, self.ws = server, ws
    self.conv = server.new_conversation()
    self.painter = (live_video.FramePainter(*server.head_stats) if draw_frames else None)
    self.buffer_frames = server.args.buffer_ms / 1000.0 * C.FRAME_RATE
    self.max_push = 4 * server.args.chunk_frames
    self.clock_start = None  # (wall time, audio frames) once the first audio went out.

  async def _call(self, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(self.server.compute, fn, *args)

  def _frames_wanted(self) -> float:
    """Audio frames that should have been sent by now: the page's playback + the buffer."""
    if self.clock_start is None:
      return self.buffer_frames
    t0, f0 = self.clock_start  # The page played audio frame f0 at wall time t0.
    return f0 + (time.monotonic() - t0) * C.FRAME_RATE + self.buffer_frames

  def _compute_chunk(self, n: int) -> dict:
    t = time.perf_counter()
    out = self.conv.advance(n)
    frames = []
    if self.painter is not None and len(out["head"]):
      frames = [base64.b64encode(j).decode("ascii") for j in
                self.painter.paint(out["head"], face_channels=out["rig"], face_codes=out["face"])]
    return {"type": "chunk", "audio_start": int(out["audio_start"]),
            "audio": _b64_pcm(out["audio"]), "participant_audio": _b64_pcm(
                out["participant_audio"]), "video_start": out["video_start"],
            "frames": frames, "head": _rounded(out["head"]), "rig": _rounded(out["rig"]),
            "events": out["events"], "input_frame": self.conv.frames_in,
            "compute_ms": 1000.0 * (time.perf_counter() - t), "samples": int(out["audio"].size)}

  async def run_output(self) -> None:
    """Keeps the output `buffer_ms` ahead of real time until the connection closes."""
    while not self.ws.closed:
      wanted = self._frames_wanted()
      need = math.ceil(wanted + self.conv.lookahead_frames - self.conv.frames_in)
      if need <= 0:
        await asyncio.sleep(0.02)
        continue
      sent = self.conv.audio_frames_out
      # Whole chunks: a network call costs the same for 2 new frames as for chunk_frames.
      n = min(max(need, self.server.args.chunk_frames), self.max_push)
      msg = await self._call(self._compute_chunk, n)
      if msg["samples"] and (self.clock_start is None or wanted - sent > 2 * C.FRAME_RATE):
        # The page starts playing at the first audio, and re-bases on an underrun (compute
        # fell seconds behind): pace from the same points.
        self.clock_start = (time.monotonic(), sent)
      if self.ws.closed:
        return
      try:
        await self.ws.send_str(json.dumps(msg))
      except ConnectionError:
        return

  async def handle(self, text: str) -> None:
    """One client message; bad input is answered with an error message, never a close."""
    try:
      msg = json.loads(text)
      if not isinstance(msg, dict):
        raise AvatarError("a message is a JSON object with a 'type'")
      kind = msg.get("type")
      if kind == "say":
        utt = await self._call(self.conv.say, msg.get("text"))
      elif kind == "tokens":
        tokens = np.asarray(msg.get("tokens"), np.float32)
        utt = await self._call(self.conv.say_tokens, tokens, msg.get("text"))
      else:
        raise AvatarError(f"unknown message type {kind!r} (say, tokens)")
    except (AvatarError, InputError, ValueError, TypeError) as e:
      await self.ws.send_str(json.dumps({"type": "error", "message": str(e).splitlines()[0]}))
      return
    await self.ws.send_str(json.dumps(
        {"type": "queued", "id": utt.id, "text": utt.text, "seconds": utt.seconds,
         "starts_at": utt.start / C.FRAME_RATE, "client_id": msg.get("client_id")}))


def make_app(server: Server):
  """The aiohttp application: the page at /, its info at /info, conversations at /stream."""
  import aiohttp  # pylint: disable=g-import-not-at-top
  from aiohttp import web  # pylint: disable=g-import-not-at-top

  async def page(_):
    return web.FileResponse(PAGE, headers={"Cache-Control": "no-store"})

  async def info(_):
    return web.json_response({"sessions": server.sessions, "workdir": server.avatar.loaded.workdir,
                              "text": server.t2t is not None})

  async def stream(request):
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=20.0)
    await ws.prepare(request)
    session = Session(server, ws, request.query.get("frames", "1") not in ("0", "false"))
    server.sockets.add(ws)
    logging.info("conversation %d opened (%d open)", id(session), server.sessions)
    await ws.send_str(json.dumps(server.hello(session.conv)))
    output = asyncio.create_task(session.run_output())
    reader = asyncio.create_task(read_messages(ws, session))
    try:
      await asyncio.wait({output, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
      output.cancel()
      reader.cancel()
      server.sockets.discard(ws)
    if reader.done() and not reader.cancelled() and reader.exception() is not None:
      logging.info("conversation %d: %s", id(session), reader.exception())  # A dropped peer.
    if output.done() and not output.cancelled() and output.exception() is not None:
      e = output.exception()
      logging.error("conversation %d failed: %s: %s", id(session), type(e).__name__, e)
      if not ws.closed:
        await ws.send_str(json.dumps({"type": "error", "fatal": True,
                                      "message": f"the avatar failed: {type(e).__name__}: {e}"}))
        await ws.close()
    logging.info("conversation %d closed (%d open)", id(session), server.sessions)
    return ws

  async def read_messages(ws, session):
    async for msg in ws:
      if msg.type == web.WSMsgType.TEXT:
        await session.handle(msg.data)
      elif msg.type == web.WSMsgType.ERROR:
        return

  async def close_sockets(_):  # A conversation never ends by itself: end them on shutdown.
    for ws in list(server.sockets):
      await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutting down")

  app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
  app.add_routes([web.get("/", page), web.get("/info", info), web.get("/stream", stream)])
  app.on_shutdown.append(close_sockets)
  return app


def _participant_inputs(args):
  features = audio = None
  if args.participant:
    features = cli.load_frames(args.participant, "--participant", C.PARTICIPANT_DIM,
                               "participant tokens + SMIRK features on the mel grid")
  if args.participant_audio:
    if not args.participant:
      raise InputError("--participant-audio needs --participant (the features of the same "
                       "recording)")
    wav, sr = audio_lib.read_wav(args.participant_audio, channels=(1, 2))
    audio = audio_lib.resample(wav.mean(1), sr, C.SAMPLE_RATE)
  return features, audio


def load_server(args) -> Server:
  """Loads the avatar (and text-to-tokens run) and checks a conversation can be built."""
  features, audio = _participant_inputs(args)
  avatar = avatar_lib.Avatar.load(args.workdir, vocoder_weights=args.vocoder_weights,
                                  which=args.which)
  t2t = text_tokens.load_text_to_tokens(args.t2t_workdir) if args.t2t_workdir else None
  server = Server(avatar, args, t2t, features, audio)
  try:
    server.new_conversation()  # Refuses unbounded windows, bad options, a foreign recording.
  except ValueError as e:
    raise AvatarError(f"cannot stream --workdir {args.workdir} with these options: {e}") from e
  return server


async def _start_site(server: Server, host: str, port: int):
  """(runner, bound port) of the app listening on host:port."""
  from aiohttp import web  # pylint: disable=g-import-not-at-top
  runner = web.AppRunner(make_app(server))
  await runner.setup()
  site = web.TCPSite(runner, host, port)
  try:
    await site.start()
  except OSError as e:
    await runner.cleanup()
    raise InputError(f"--host {host} --port {port}: cannot listen ({e.strerror})") from e
  return runner, runner.addresses[0][1]


class BackgroundServer:
  """The server on its own event loop thread (tests, benchmarks, notebooks).

  with serve.BackgroundServer(server) as url: ...   # url: http://127.0.0.1:PORT/
  """

  def __init__(self, server: Server, host: str = "127.0.0.1", port: int = 0):
    self.server, self.host, self.port = server, host, port
    self._loop = asyncio.new_event_loop()
    self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
    self._runner = None

  def __enter__(self) -> str:
    self._thread.start()
    self._runner, port = asyncio.run_coroutine_threadsafe(
        _start_site(self.server, self.host, self.port), self._loop).result()
    return f"http://{self.host}:{port}/"

  def __exit__(self, *exc) -> None:
    asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
    self._loop.call_soon_threadsafe(self._loop.stop)
    self._thread.join(timeout=30)


def run(args) -> None:
  server = load_server(args)
  print("compiling the avatar's stream ...", flush=True)
  print(f"ready in {server.warmup():.1f} s", flush=True)
  conv = server.new_conversation()
  print(f"look-ahead {1000 * conv.lookahead_frames / C.FRAME_RATE:.0f} ms (model "
        f"{1000 * conv.sampler.lookahead_frames / C.FRAME_RATE:.0f} ms, "
        f"{'exact' if conv.sampler.exact else 'low-latency'} mode); typed text "
        f"{'on' if server.t2t is not None else 'off (no --t2t-workdir)'}", flush=True)
  py_logging.getLogger("aiohttp.access").setLevel(py_logging.WARNING)

  async def serve():
    runner, port = await _start_site(server, args.host, args.port)
    print(f"serving http://{args.host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
      await asyncio.Event().wait()
    finally:
      await runner.cleanup()

  try:
    asyncio.run(serve())
  except KeyboardInterrupt:
    pass
  finally:
    server.compute.shutdown(wait=False, cancel_futures=True)


def main(argv: Optional[list[str]] = None) -> int:
  """CLI entry point; returns the exit code (2 for bad input, with one line on stderr)."""
  return cli.run(argv, make_parser, run, (InputError,))


if __name__ == "__main__":
  sys.exit(main())

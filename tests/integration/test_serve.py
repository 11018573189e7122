"""The live avatar: a conversation listens, speaks each queued turn and listens again, whatever
the pace it is driven at; the endpoint answers bad input with a message and goes on, serves
several connections and survives a dropped one; a real headless Chromium hears and sees the
avatar speak a typed sentence."""

import asyncio
import base64
import json
import os
import time

import numpy as np
import pytest

from avflow_jax import api
from avflow_jax import serve
from avflow_jax.core import constants as C
from avflow_jax.core.errors import AvatarError
from avflow_jax.inference import conversation
from benchmarks import browser
from tests import fixtures
from tests.integration import test_api

pytestmark = pytest.mark.usefixtures("fast_compile")  # A tiny model: compile >> run.


@pytest.fixture(scope="module")
def avatar(tiny_shards):
  return api.Avatar.load(test_api.avatar_workdir(tiny_shards))


def _speech(n: int = 40) -> np.ndarray:
  """Token frames of a short word: characters spiking out of the blank, as a CTC head scores."""
  tok = conversation.silence_tokens(n)
  for i, c in zip(range(4, n - 4, 6), "HELLOW"):
    tok[i:i + 2, C.TOKEN_LABELS.index(c)] = 10.0
    tok[i:i + 2, 0] = 3.0
  return tok


def _drive(avatar, steps, say_at: int, total: int):
  """Advances a conversation in `steps` sizes, queueing one turn once `say_at` frames are in."""
  conv = conversation.Conversation(avatar, chunk_frames=16, seed=3)
  chunks, utt, i = [], None, 0
  while conv.frames_in < total:
    if utt is None and conv.frames_in >= say_at:
      utt = conv.say_tokens(_speech())
    chunks.append(conv.advance(min(steps[i % len(steps)], total - conv.frames_in)))
    i += 1
  return conv, utt, chunks


def test_conversation_speaks_a_turn_between_listening_whatever_the_pace(avatar):
  conv, utt, chunks = _drive(avatar, [32], say_at=64, total=360)
  assert utt.start == 64 and utt.end == 64 + 40
  events = [e for c in chunks for e in c["events"]]
  assert [e["type"] for e in events] == ["speaking", "listening"]
  assert events[0]["time"] == pytest.approx(64 / C.FRAME_RATE)
  assert events[1]["time"] == pytest.approx(104 / C.FRAME_RATE)
  # The chunks tile the output: audio and 30 fps frames follow on without gaps.
  audio_at = video_at = 0
  for c in chunks:
    assert c["audio_start"] == audio_at and c["video_start"] == video_at
    audio_at += c["audio"].size
    video_at += len(c["head"])
    assert len(c["head"]) == len(c["face"]) and np.isfinite(c["audio"]).all()
  # The output trails the input by the look-ahead (and a chunk), no more.
  assert 360 - conv.lookahead_frames - 32 <= audio_at / C.HOP_LENGTH <= 360
  assert conv.sampler.buffered_frames() < 600  # Bounded, not the whole conversation.
  # Another pace, the same conversation: what is heard does not depend on the server's ticks.
  _, utt2, other = _drive(avatar, [5, 27, 13, 19, 50], say_at=64, total=360)
  assert utt2.start == 64
  a = np.concatenate([c["audio"] for c in chunks])
  b = np.concatenate([c["audio"] for c in other])
  n = min(a.size, b.size)
  assert n > 200 * C.HOP_LENGTH
  np.testing.assert_allclose(a[:n], b[:n], atol=1e-4)


def test_conversation_refuses_bad_turns_and_goes_on(avatar):
  conv = conversation.Conversation(avatar, chunk_frames=16, max_queued_seconds=1.0)
  with pytest.raises(AvatarError, match="typed text needs a text-to-tokens run"):
    conv.say("Hello.")
  with pytest.raises(AvatarError, match="30"):
    conv.say_tokens(np.zeros((10, 30), np.float32))
  bad = _speech()
  bad[3, 3] = np.nan
  with pytest.raises(AvatarError, match="NaN|finite"):
    conv.say_tokens(bad)
  conv.say_tokens(_speech(80))
  with pytest.raises(AvatarError, match="already waiting"):
    conv.say_tokens(_speech(80))
  out = conv.advance(conv.lookahead_frames + 40)
  assert out["audio"].size > 0  # Still talking.


def test_a_recorded_participant_is_played_back_then_a_still_listener(tmp_path):
  from avflow_jax.training import random_init  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  shards = synthetic.write_synthetic_shards(str(tmp_path / "shards"), n_train=2, n_val=1,
                                            participant=True)
  config = tiny.get_config()
  config.data.participant = True
  dyadic = api.Avatar.load(random_init.init_workdir(config, str(tmp_path / "run"), shards))
  with pytest.raises(AvatarError, match="87"):
    conversation.Conversation(dyadic, participant=np.zeros((50, 30), np.float32))
  rec = dyadic.neutral_participant(120) + 0.5
  voice = np.sin(np.arange(120 * C.HOP_LENGTH) / 30.0).astype(np.float32)
  conv = conversation.Conversation(dyadic, chunk_frames=16, participant=rec,
                                   participant_audio=voice)
  assert conv.dyadic
  np.testing.assert_array_equal(conv._participant_frames(100, 130)[:20], rec[100:])  # pylint: disable=protected-access
  np.testing.assert_array_equal(conv._participant_frames(100, 130)[20:],  # pylint: disable=protected-access
                                np.broadcast_to(dyadic.neutral_participant(1), (10, 87)))
  heard = []
  while conv.frames_in < 300:  # Past the recording's end: the avatar goes on listening.
    out = conv.advance(40)
    assert out["participant_audio"].size == out["audio"].size
    heard.append(out["participant_audio"])
  heard = np.concatenate(heard)
  np.testing.assert_array_equal(heard[:voice.size], voice)  # In step with the avatar's audio.
  assert not heard[voice.size:].any()


# ---- The endpoint ---------------------------------------------------------------------------

def _server(avatar, t2t=None, extra=()):
  args = serve.make_parser().parse_args(
      ["--workdir", avatar.loaded.workdir, "--chunk-frames", "16", *extra])
  return serve.Server(avatar, args, t2t)


async def _until(ws, pred, timeout=60.0):
  """Messages of `ws` up to and including the first for which pred is true."""
  seen = []
  deadline = time.monotonic() + timeout
  while True:
    msg = json.loads((await ws.receive(timeout=max(0.1, deadline - time.monotonic()))).data)
    seen.append(msg)
    if pred(msg):
      return seen


def test_endpoint_answers_bad_input_serves_two_pages_and_survives_a_drop(avatar):
  aiohttp = pytest.importorskip("aiohttp")

  async def talk(url):
    async with aiohttp.ClientSession() as http:
      a = await http.ws_connect(url + "stream?frames=0")
      b = await http.ws_connect(url + "stream")
      hello = await a.receive_json()
      assert hello["type"] == "hello" and hello["text"] is False
      assert hello["lookahead_frames"] > 0 and hello["sample_rate"] == C.SAMPLE_RATE
      for bad, fragment in [("not json", "Expecting value"),
                            (json.dumps({"type": "say", "text": "Hi."}), "typed text needs"),
                            (json.dumps({"type": "tokens", "tokens": [[1.0] * 30]}), "30"),
                            (json.dumps({"type": "dance"}), "unknown message type")]:
        await a.send_str(bad)
        seen = await _until(a, lambda m: m["type"] == "error")
        assert fragment in seen[-1]["message"]
      await a.send_str(json.dumps({"type": "tokens", "tokens": _speech().tolist(),
                                   "text": "hello"}))
      seen = await _until(a, lambda m: m["type"] == "queued")
      assert seen[-1]["text"] == "hello" and seen[-1]["seconds"] == pytest.approx(40 / 86.13, 1e-3)
      seen = await _until(a, lambda m: any(e["type"] == "listening" for e in m.get("events", [])))
      kinds = [e["type"] for m in seen for e in m.get("events", [])]
      assert kinds == ["speaking", "listening"]
      chunks = [m for m in seen if m["type"] == "chunk"]
      assert sum(m["samples"] for m in chunks) > 0 and all(not m["frames"] for m in chunks)
      # The other page got its own conversation, with pictures.
      seen = await _until(b, lambda m: m["type"] == "chunk" and m["frames"])
      jpeg = base64.b64decode(seen[-1]["frames"][0])
      assert jpeg[:2] == b"\xff\xd8"
      async with http.get(url + "info") as r:
        assert (await r.json())["sessions"] == 2
      await b.close()
      a._response.connection.transport.abort()  # A dropped connection, not a goodbye.  pylint: disable=protected-access
      for _ in range(100):
        async with http.get(url + "info") as r:
          if (await r.json())["sessions"] == 0:
            break
        await asyncio.sleep(0.1)
      assert (await (await http.get(url + "info")).json())["sessions"] == 0
      c = await http.ws_connect(url + "stream?frames=0")  # And the server goes on.
      await _until(c, lambda m: m["type"] == "chunk" and m["samples"] > 0)
      await c.close()

  with serve.BackgroundServer(_server(avatar)) as url:
    asyncio.run(talk(url))


# ---- The page in a real browser ---------------------------------------------------------------

def _chromium(tmp_path):
  why = browser.missing()
  if why:
    if os.environ.get("AVFLOW_REQUIRE_BROWSER"):
      pytest.fail(why)
    pytest.skip(why)
  return browser.start(str(tmp_path / "chromium"))


def test_page_speaks_a_typed_sentence_in_headless_chromium(avatar, tiny_shards, tmp_path):
  from selenium.webdriver.common.by import By  # pylint: disable=g-import-not-at-top
  t2t = api.load_text_to_tokens(fixtures.random_t2t_workdir(str(tmp_path / "t2t"), tiny_shards))
  server = _server(avatar, t2t)
  driver = _chromium(tmp_path)
  server.warmup()  # As `serve` does before it listens.
  try:
    with serve.BackgroundServer(server) as url:
      driver.get(url)
      driver.find_element(By.ID, "start").click()
      browser.wait_for(driver, "return avflow.state === 'listening' && avflow.framesDrawn > 5")
      box = driver.find_element(By.ID, "text")
      box.send_keys("Hello there.")
      driver.find_element(By.ID, "say").click()
      turn = browser.wait_for(driver, "return avflow.turns.length && avflow.turns[0]")
      browser.wait_for(driver, "return avflow.state === 'listening' && avflow.audioPlayedSeconds > 1.5")
      stats = driver.execute_script("return avflow")
      assert stats["framesDrawn"] > 30 and stats["audioScheduledSeconds"] > 1.5
      assert turn["text"] == "Hello there."
      lookahead = stats["hello"]["lookahead_ms"]
      print(json.dumps({"submit_to_first_audio_ms": round(turn["ms"]),
                        "lookahead_ms": round(lookahead), "beyond_ms": round(turn["beyond_ms"])}))
      assert lookahead < turn["ms"] < lookahead + 20_000  # Heard after the look-ahead.
      # Bad input gets a message on the page, and the avatar goes on.
      drawn = stats["framesDrawn"]
      driver.find_element(By.ID, "say").click()  # Empty.
      box.send_keys("\u2603")  # A snowman: no phoneme at all.
      driver.find_element(By.ID, "say").click()  # Nothing to speak.
      browser.wait_for(driver, "return avflow.errors.length >= 2")
      errors = driver.execute_script("return avflow.errors")
      assert errors[0] == "type something first" and "no speakable symbols" in errors[1], errors
      assert "no speakable symbols" in driver.find_element(By.ID, "log").text
      browser.wait_for(driver, f"return avflow.framesDrawn > {drawn + 10}")
      # A second tab gets its own conversation while the first stays open.
      driver.switch_to.new_window("tab")
      driver.get(url)
      driver.find_element(By.ID, "start").click()
      browser.wait_for(driver, "return avflow.framesDrawn > 3")
      assert server.sessions == 2
  finally:
    driver.quit()

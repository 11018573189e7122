"""Tests for the demo avatar corpus generator (data_prep.demo and its helpers)."""

import difflib
import glob
import json
import os
import re

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

import soundfile  # pylint: disable=g-import-not-at-top

from avflow_jax.core import face_rig  # pylint: disable=g-import-not-at-top
from data_prep import demo  # pylint: disable=g-import-not-at-top
from data_prep import demo_motion  # pylint: disable=g-import-not-at-top
from data_prep import demo_tokens  # pylint: disable=g-import-not-at-top

SMIRK = os.path.join("participant", "camera01", "smirk_outputs")


def _files(root):
  return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*"),
                                                            recursive=True)
                if os.path.isfile(p))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("demo"))
  demo.generate(root, minutes=0.5, seed=7, workers=1, progress=False)
  return root


def test_deterministic_for_a_seed(corpus, tmp_path):
  again = str(tmp_path / "again")
  demo.generate(again, minutes=0.5, seed=7, workers=2, progress=False)
  files = _files(corpus)
  assert files == _files(again)
  assert len(files) > 20
  for rel in files:
    with open(os.path.join(corpus, rel), "rb") as a, open(os.path.join(again, rel), "rb") as b:
      assert a.read() == b.read(), rel


def test_plan_val_split_and_names():
  plans = demo.plan_corpus(30, seed=0)
  assert 50 <= len(plans) <= 70
  names = [p.name for p in plans]
  assert names == sorted(names) and len(set(names)) == len(names)
  assert all(re.match(r"^\d{8}_s\d{4}$", n) for n in names)
  dates = sorted({n[:8] for n in names})
  assert len(dates) >= 4
  val = [n for n in names if n[:8] in dates[-2:]]
  assert 0.10 <= len(val) / len(names) <= 0.15
  seconds = np.array([p.num_frames for p in plans]) / 30
  assert seconds.min() >= 15 and seconds.max() <= 50
  assert abs(seconds.sum() - 1800) < 2


def test_layout_shapes_and_rates(corpus):
  segs = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(corpus, "audio",
                                                                          "*.wav")))
  assert len(segs) == 3
  assert len({s[:8] for s in segs}) == 3  # tiny corpus: 1 train date + 2 val dates.
  rig = face_rig.FaceRig.load(os.path.join(corpus, "demo_rig", "face_rig.npz"))
  stats = {k: np.load(os.path.join(corpus, "stats", k + ".npy"))
           for k in ("expression_min", "expression_max", "headpose_min", "headpose_max")}
  assert stats["expression_min"].shape == (55,) and stats["headpose_max"].shape == (3,)
  for seg in segs:
    audio, sr = soundfile.read(os.path.join(corpus, "audio", seg + ".wav"), dtype="int16")
    assert sr == 48000 and audio.ndim == 2 and audio.shape[1] == 2
    n = audio.shape[0] // 1600
    assert audio.shape[0] == n * 1600 and 8 * 30 <= n
    assert audio[:, 0].std() > 300 and audio[:, 1].std() > 100  # both people speak.
    codes = np.load(os.path.join(corpus, "expression_codes", seg + ".npy"))
    assert codes.shape == (n, 256) and codes.dtype == np.float32
    channels = np.load(os.path.join(corpus, "demo_rig", seg + ".npy"))
    assert channels.shape == (n, 6)
    assert channels.min() >= 0 and channels.max() <= 1
    assert np.abs(rig.decode(codes) - channels).max() < 1e-4
    head = np.load(os.path.join(corpus, "headpose", seg + "--headpose.npy"))
    assert head.shape == (n, 4, 4)
    rot = head[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape),
                               atol=1e-5)
    np.testing.assert_allclose(head[:, 3], np.broadcast_to([0, 0, 0, 1], (n, 4)))
    tokens = np.load(os.path.join(corpus, demo.TOKEN_DIR, seg + ".npy"))
    expected_tok = (n * 1600 // 3 - 400) // 320 + 1  # wav2vec2 frames of the 16 kHz audio.
    assert tokens.shape == (2, expected_tok, 29)
    assert abs(tokens.shape[1] / (n / 30) - 49.95) < 0.1
    exp = np.load(os.path.join(corpus, SMIRK, seg + "--expression.npy"))
    hp = np.load(os.path.join(corpus, SMIRK, seg + "--headpose.npy"))
    assert exp.shape == (n, 55) and hp.shape == (n, 3)
    assert np.all(exp >= stats["expression_min"]) and np.all(exp <= stats["expression_max"])
    with open(os.path.join(corpus, "transcripts", seg + ".json")) as f:
      transcript = json.load(f)
    assert {u["speaker"] for u in transcript} <= {"actor", "participant"}
    assert all(0 <= u["start"] < u["end"] <= n / 30 for u in transcript)
    # The actor's token channel spells the actor's transcript (CTC greedy decoding).
    said = " ".join(u["text"] for u in transcript if u["speaker"] == "actor")
    said = " ".join(re.sub(r"[^A-Z' ]", " ", said.upper()).split())
    heard = demo_tokens.greedy_decode(tokens[0])
    assert difflib.SequenceMatcher(None, said, heard).ratio() > 0.95, (said, heard)


def test_rig_follows_phone_timings():
  P = demo_motion.Phone
  phones = [P(0.10, 0.18, "m", 0), P(0.18, 0.40, "a", 2), P(0.40, 0.47, "p", 0),
            P(0.47, 0.75, "u:", 0), P(0.75, 0.80, "_", 0)]
  n = demo_motion.RIG_RATE  # one second.
  art = demo_motion.articulation(phones, n)

  def at(name, t):
    return art[name][int(t * demo_motion.RIG_RATE)]

  assert at("lip_closure", 0.16) > 0.5 and at("lip_closure", 0.45) > 0.5  # m, p
  assert at("lip_closure", 0.32) < 0.1 and at("lip_closure", 0.65) < 0.1  # vowels
  assert at("jaw_open", 0.32) > 0.7 and at("jaw_open", 0.65) < 0.4  # open a, close u
  assert at("lip_round", 0.65) > 0.8 and at("lip_round", 0.32) < 0.1  # rounded u only
  assert at("lip_closure", 0.95) > 0.5  # lips rest closed after speech.


def test_tokens_spell_word_groups():
  word = demo_tokens.Word(("in", "the"), 0.0, 0.3,
                          ((0.0, 0.05, "I"), (0.05, 0.1, "n"), (0.1, 0.2, "D"),
                           (0.2, 0.3, "@")))
  word2 = demo_tokens.Word(("small",), 0.3, 0.6,
                           ((0.3, 0.4, "s"), (0.4, 0.45, "m"), (0.45, 0.55, "O:"),
                            (0.55, 0.6, "l")))
  logits = demo_tokens.token_logits([word, word2], [(0.0, 0.6)], 40,
                                    np.random.default_rng(0))
  assert logits.shape == (40, 29)
  assert demo_tokens.greedy_decode(logits) == "IN THE SMALL"
  assert demo_tokens.align_letters(list("MOM"), ["m", "'0", "m"]) == [0, 1, 2]

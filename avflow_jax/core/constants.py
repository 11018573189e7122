"""Constants shared by data prep, training, sampling and evaluation.

Values follow the official AV-Flow implementation and BigVGAN's base 22 kHz / 80-band mel
(see docs/data_format.md).
"""

SAMPLE_RATE = 22050  # Hz, the vocoder's and the mel's rate.
HOP_LENGTH = 256  # samples per mel frame.
N_FFT = 1024
WIN_LENGTH = 1024
N_MELS = 80
MEL_FMIN = 0.0
MEL_FMAX = 8000.0
FRAME_RATE = SAMPLE_RATE / HOP_LENGTH  # 86.1328125 fps: every stream lives on this grid.
VIDEO_FPS = 30.0  # native rate of face codes and head pose; previews are rendered at it.

# AV-Flow divides the waveform by 1.1 before the mel and multiplies the vocoder output back.
AUDIO_GAIN = 1.1
# Matcha-TTS LJSpeech log-mel statistics, used by the official code to normalise mels.
MEL_MEAN = -5.5366
MEL_STD = 2.1161

# Per-frame ASR character tokens: wav2vec 2.0 base 960h CTC logits in torchaudio's label order.
TOKEN_LABELS = ("-", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M",
                "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z")
TOKEN_DIM = len(TOKEN_LABELS)  # 29
# Hugging Face wav2vec2-base-960h logits (32) -> the 29 labels above.
HF_TO_TOKEN_INDEX = (0,) + tuple(range(4, 32))
TOKEN_MEAN = -2.8461  # text-to-tokens statistics from the official code.
TOKEN_STD = 4.5255
# Token logits of silence: the blank wins and every other label lies far below it, as a CTC
# head scores a pause (the demo corpus's levels). A streaming avatar listens on these frames.
SILENCE_BLANK_LOGIT = 9.0
SILENCE_OTHER_LOGIT = -5.0

FACE_DIM = 256
HEAD_LATENT_DIM = 8
SMIRK_DIM = 58
PARTICIPANT_DIM = TOKEN_DIM + SMIRK_DIM  # 87

# The official code's mel normalisation: one scalar affine for all bands (audio_encoders.py).
OFFICIAL_MEL_MEAN, OFFICIAL_MEL_STD = -5.5366, 2.1161

"""The text front end: cleaning, Matcha-TTS symbols, eSpeak NG phonemes (`frontend` is the API)."""

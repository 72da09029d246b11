"""Shared test inputs: multilingual text that stresses tokenization."""

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",
    "北京是中华人民共和国的首都，也是全国的政治中心。",
    "東京は日本の首都です。ひらがなとカタカナ。",
    "서울은 대한민국의 수도이다.",
    "القاهرة هي عاصمة مصر وأكبر مدنها.",
    "नई दिल्ली भारत की राजधानी है।",
    "Emoji: 😀👍🏽👨‍👩‍👧 and flags 🇫🇷🇩🇪",
    "Combining accents: cafe\u0301 vs café, n\u0303 and Å",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code\n\tindented\twith\ttabs",
    "runs of   spaces,\n\n\nnewlines\r\n and trailing spaces   ",
    "numbers 1234567890 and 3.14159, dates 2026-11-25",
    "Ünïcödé ñ ß Ø œ — “quotes” ‘single’ … «guillemets»",
    "Марков процесс — это случайный процесс.",
    "",
]

MARKER_STRINGS = ["<|embed_token|>", "<|rerank_token|>", "<|im_start|>", "<|im_end|>", "<think>"]

# Texts whose tokens average more than 16 bytes (Qwen has single tokens of up to 80 "=",
# 96 "-" and 128 spaces), each over 2,048 tokens: rules, padded tables and whitespace runs,
# alone and between other scripts, so a cut lands inside or beside each kind of token.
LONG_TOKENS = {
    "equals rule": "=" * 140_000,
    "space run": "a" + " " * 270_000 + "b",
    "dashed lines": ("-" * 96 + "\n") * 2_100,
    "padded table": ("| cell" + " " * 120 + "| 北京" + " " * 120 + "|\n") * 700,
    "rules between CJK": ("=" * 80 + "北京是中华人民共和国的首都") * 700,
    "rules between emoji": ("-" * 300 + "👨‍👩‍👧🇫🇷😀") * 300,
    "rules between Arabic": ("=" * 160 + " القاهرة هي عاصمة مصر ") * 500,
    "whitespace between Devanagari": ("\t" * 20 + " " * 250 + "नई दिल्ली") * 300,
}

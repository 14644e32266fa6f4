"""A fixed corpus of texts for comparing tokenizers with each other (ours with
transformers', llama.cpp's, ...): many scripts, emoji, combining marks, whitespace,
code, numbers, URLs, special-token look-alikes and edge cases (empty, one character).

Invariant: `CORPUS` (at least 500 distinct strings) is the same list, in the same order,
on every run and machine: the generated part uses only a seeded `random.Random` and pure
functions. Nothing here depends on a model.
"""

from __future__ import annotations

import random
import unicodedata

SCRIPTS: dict[str, list[str]] = {
    "latin": [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.",
        "Ça va? Très bien, merci — à demain!",
        "Fußgängerübergänge sind gefährlich für Käfer.",
        "¿Dónde está la estación de ferrocarril?",
        "Zażółć gęślą jaźń",
        "Příliš žluťoučký kůň úpěl ďábelské ódy.",
        "Árvíztűrő tükörfúrógép",
        "Việt Nam có 54 dân tộc; Cửa Việt đẹp lắm.",
        "Ørsted og Ærø ligger i Danmark; Åland er svensk.",
        "İstanbul'da ılık bir gün, ĞÜŞİÖÇ.",
        "Lietuvių kalba: ąčęėįšųūž",
    ],
    "cyrillic": [
        "Привет, мир!",
        "нещо на Български",
        "Съешь же ещё этих мягких французских булок, да выпей чаю.",
        "Україна: їжак, ґанок, єнот",
        "Ђорђе и Љиљана једу џем.",
    ],
    "greek": [
        "Γειά σου Κόσμε",
        "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
        "ὁ λόγος ἐστὶν ἀληθής",
    ],
    "arabic": [
        "مرحبا بالعالم",
        "اللُّغَةُ الْعَرَبِيَّةُ جَمِيلَةٌ",
        "في عام ٢٠٢٤ كان العدد ١٢٣٤٥",
        "سلام دنیا، حال شما چطور است؟",
    ],
    "hebrew": [
        "שלום עולם",
        "עִבְרִית מְנֻקֶּדֶת",
        "המחיר הוא 100 ₪ בלבד.",
    ],
    "devanagari": [
        "नमस्ते दुनिया",
        "हिन्दी भाषा बहुत सुंदर है। क्या आप जानते हैं?",
        "संस्कृतम् ॐ ०१२३४५६७८९",
    ],
    "thai": [
        "สวัสดีชาวโลก",
        "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ",
        "กรุงเทพมหานคร อมรรัตนโกสินทร์",
    ],
    "khmer": ["កាន់តែពិសេសអាចខលចេញ", "សួស្តីពិភពលោក"],
    "cjk": [
        "你好，世界！",
        "我想在apple工作1314151天～",
        "漢字と中文字符：龍龘齉",
        "北京市朝阳区建国路88号",
        "「引用」『二重』【括弧】",
    ],
    "korean": [
        "안녕하세요 세계",
        "한국어는 띄어쓰기를 합니다.",
        "ㄱㄴㄷ ㅏㅑㅓ 똠방각하",
    ],
    "japanese": [
        "こんにちは世界",
        "カタカナとひらがなと漢字が混ざった文です。",
        "ｶﾞｷﾞｸﾞ半角カナ",
        "東京タワーは333メートルです。",
    ],
    "other": [
        "ქართული ენა",
        "Հայերեն լեզու",
        "አማርኛ ቋንቋ",
        "தமிழ் மொழி",
        "বাংলা ভাষা",
        "ᠮᠣᠩᠭᠣᠯ",
        "ᚠᚢᚦᚨᚱᚲ",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕄𝕒𝕥𝕙 𝟙𝟚𝟛",
    ],
}

EMOJI = [
    "🦙",
    "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ (only emoji that has its own token)",
    "👍👍🏻👍🏼👍🏽👍🏾👍🏿",
    "👨‍👩‍👧‍👦 family",
    "🧑🏿‍💻 coder, 👩🏽‍🚀 astronaut",
    "🏳️‍🌈🏴‍☠️",
    "🇺🇸🇯🇵🇩🇪🇫🇷🇧🇷",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland",
    "❤️❤ ♥ ☺️ ✌🏽",
    "1️⃣ #️⃣ *️⃣",
    "I ❤️ 🍕!!!",
    "😁 ?",
    "🦙🦙🦙.cpp",
]

NFD = [
    unicodedata.normalize("NFD", "Café naïve résumé Ångström"),
    unicodedata.normalize("NFD", "Việt Nam, Cửa Việt"),
    unicodedata.normalize("NFD", "한국어 조합형"),
    unicodedata.normalize("NFD", "Äpfel über Öl"),
    "e\u0301 a\u0300 o\u0302 n\u0303 u\u0308",
    "Z\u0351\u036b\u0343a\u0352\u0310l\u0357g\u0352o\u0327",
    "\u0301leading combining mark",
    "a\u200bb\u200cc\u200dd\ufeffe",
    "\u00a0non\u00a0breaking\u2009thin\u3000ideographic",
    "soft\u00adhyphen",
    "left\u200e-to-\u200fright \u202aembed\u202c",
]

WHITESPACE = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\n\n\n",
    "\t\n",
    "\r\n",
    "\r\n\r\n",
    "\r",
    " \r\n ",
    "\v\f",
    "  leading spaces",
    "trailing spaces   ",
    "   both   ",
    "\tTabbed\tcolumns\tof\ttext\t",
    "line one\nline two\n\nline four\n",
    "windows\r\nline\r\nendings\r\n",
    "    Hello\n    Hello",
    "\n =",
    " (",
    "' era",
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n",
    "a" + " " * 40 + "b",
    " " * 100,
    "\t" * 17,
    "\n" * 25,
    "mixed \t \n \r\n whitespace",
]

CODE = [
    'def add(a: int, b: int) -> int:\n    """Add two numbers."""\n    return a + b\n',
    "class Foo(Bar):\n\tdef __init__(self):\n\t\tsuper().__init__()\n",
    "for (let i = 0; i < n; i++) { console.log(`i=${i}`); }",
    "const f = async (x) => await fetch(x).then(r => r.json());",
    '{"name": "llmcore", "version": "0.1.0", "tags": ["a", "b"], "n": null}',
    '{\n  "nested": {"deep": [1, 2.5, -3e10, true, false]}\n}',
    '<!DOCTYPE html>\n<html lang="en"><head><title>T</title></head>'
    '<body><p class="x">Hi &amp; bye</p></body></html>',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }',
    "if x != None and y == 0:\n        pass  # TODO: fix",
    'fn main() { let v: Vec<u8> = vec![0xFF; 16]; println!("{:?}", v); }',
    "$ ls -la | grep '\\.py$' > out.txt 2>&1 && echo done",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "lambda: {k: v for k, v in d.items()}",
    "a->b; c::d; e=>f; g<=h; i>=j; k!==l; m===n; o||p; q&&r",
    "```python\nprint('hi')\n```",
    "<div>\n    <span>indented</span>\n</div>",
    "// comment\n/* block\n   comment */",
    "@decorator\n@another(arg=1)\ndef f(): ...",
    "ØMQ `backticks` ~tilde~ ^caret^ |pipe| \\backslash\\",
]

NUMBERS = [
    "3",
    "33",
    "333",
    "3333",
    "33333",
    "333333",
    "3333333",
    "33333333",
    "333333333",
    "1234567890123456789012345678901234567890",
    "3.14159265358979",
    "1,000,000",
    "1.000.000,00",
    "-42",
    "+7 (495) 123-45-67",
    "1e-10 6.022e23",
    "0x1F 0b1010 0o777",
    "2024-01-15T12:34:56Z",
    "12:30pm, 3/4 cup, 50%",
    "$1,234.56 €99,99 £5 ¥1000",
    "w048 7tuijk dsdfhu",
    "ied 4 ½ months",
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3",
    "١٢٣ ४५६ ๗๘๙ 四五六",
    "Ⅻ ⅓ ² ³ ¹",
]

URLS = [
    "https://www.example.com/path/to/page?query=1&lang=en#section",
    "http://localhost:8080/v1/chat/completions",
    "ftp://files.example.org/pub/file-1.2.3.tar.gz",
    "mailto:someone@example.com",
    "user.name+tag@sub.domain.co.uk",
    "Visit https://hf.co/HuggingFaceTB/SmolLM2-135M-Instruct today!",
    "C:\\Users\\name\\Documents\\file.txt",
    "/usr/local/lib/python3.11/site-packages/",
    "git@github.com:owner/repo.git",
    "https://例え.テスト/パス?キー=値",
]

SPECIAL_TEXT = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
    "<s>[INST] Hello [/INST] Hi</s>",
    "a<s>b</s>c",
    " <s> spaced </s> ",
    "<|endoftext|><|endoftext|>",
    "text<|endoftext|>more text",
    "<|im_sta",
    "<|im_start",
    "<|im_start|",
    "< s >",
    "<<s>>",
    "[CLS] sentence one [SEP] sentence two [SEP]",
    "<|user|>\nquestion<|end|>\n<|assistant|>\n",
    "<repo_name>owner/repo<file_sep>main.py",
    "<think>reasoning</think>answer",
    '<tool_call>{"name": "f"}</tool_call>',
    "<0x0A> <0xFF>",
    "▁leading▁underline▁chars",
    "Ġ Ċ ĉ",
    "[PAD151646]",
]

PUNCTUATION = [
    "!!!!!!",
    "??????",
    "......",
    "...",
    "!?!?",
    "''''''```````\"\"\"\"......!!!!!!??????",
    "------=======",
    "***___###",
    "«Guillemets» „Anführung“ “quotes” ‘single’",
    "—–‐ … · • ‰ † ‡",
    "(((nested))) [[[brackets]]] {{{braces}}}",
    ";;::,,..",
    "~`!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/",
    "。，、；：？！",
    "Hello, world!",
    " Hello, world!",
    "Hello World",
    " Hello World",
    " Hello World!",
    "Hello",
    " Hello",
    "  Hello",
    "   Hello",
    "    Hello",
    " this is 🦙.cpp",
    " discards",
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
]

CONTRACTIONS = [
    "I'M",
    "I'm",
    "i'm",
    "they'll",
    "THEY'LL",
    "They'Ll",
    "don't DON'T Don'T",
    "it's IT'S",
    "we've WE'VE We'Ve",
    "you'd YOU'D",
    "you're YOU'RE",
    "'s 't 're 've 'm 'll 'd",
    "'S 'T 'RE 'VE 'M 'LL 'D",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? "
    "We'Ve a'lL",
    "rock'n'roll o'clock",
    "students' books",
    "'quoted'",
    "\u017fome long-s: 'ſ ſ'",
    "KELVIN \u212a and 'K",
]

LONG = [
    " ".join(["lorem ipsum dolor sit amet"] * 40),
    "a" * 500,
    "ab" * 300,
    "0123456789" * 30,
    "🦙" * 50,
    "的" * 200,
    "=" * 120,
    "x" + " " * 300 + "y",
    "".join(chr(c) for c in range(0x20, 0x7F)),
    "".join(chr(c) for c in range(0xA0, 0x180)),
]


def _single_characters() -> list[str]:
    """Every printable ASCII character, and a handful of others, alone."""
    ascii_chars = [chr(c) for c in range(0x21, 0x7F)]
    others = ["é", "ß", "Ж", "λ", "ع", "ש", "क", "ก", "中", "한", "あ", "ア", "€", "🦙", "\u0301"]
    others += ["\x00", "\x07", "\x1b", "\x7f", "\ufffd", "\U0010ffff", "\ue000"]
    return ascii_chars + others


def _generated(count: int, seed: int = 20240607) -> list[str]:
    """Deterministic mixtures of the fragments above, joined by varied separators."""
    rng = random.Random(seed)
    pool = [text for texts in SCRIPTS.values() for text in texts]
    pool += EMOJI + NUMBERS + CONTRACTIONS + PUNCTUATION + SPECIAL_TEXT[:12] + NFD[:4]
    pool += [line for code in CODE[:6] for line in code.splitlines() if line.strip()]
    separators = ["", " ", "  ", "\t", "\n", "\r\n", " \n ", "\n\n", "   ", ", ", ". "]
    texts = []
    for _ in range(count):
        parts = [rng.choice(pool) for _ in range(rng.randint(1, 5))]
        text = parts[0]
        for part in parts[1:]:
            text += rng.choice(separators) + part
        if rng.random() < 0.25:
            text = rng.choice([" ", "  ", "\n", "\t"]) + text
        if rng.random() < 0.25:
            text += rng.choice([" ", "  ", "\n", "\r\n", "\t"])
        texts.append(text)
    return texts


def _case_variants(texts: list[str]) -> list[str]:
    return [variant for text in texts for variant in (text.upper(), text.lower(), text.title())]


def _build() -> list[str]:
    corpus = [text for texts in SCRIPTS.values() for text in texts]
    corpus += EMOJI + NFD + WHITESPACE + CODE + NUMBERS + URLS + SPECIAL_TEXT
    corpus += PUNCTUATION + CONTRACTIONS + LONG + _single_characters()
    corpus += _case_variants(SCRIPTS["latin"][:6] + SCRIPTS["greek"][:2] + CONTRACTIONS[:6])
    corpus += _generated(260)
    return list(dict.fromkeys(corpus))  # unique, order kept


CORPUS: list[str] = _build()

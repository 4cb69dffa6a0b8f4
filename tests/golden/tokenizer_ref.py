#!/usr/bin/env python3
"""tokenizer_ref.py - an independent reference of the Qwen3 tokenizer, for differential tests.

Written from tokenizer.json alone (not from zimage's C code, not from HF `tokenizers`):
added tokens are split off the raw text first (leftmost, then longest), the rest is NFC
normalised (Python's unicodedata, not utf8proc), split by the pre-tokenizer's regex (the
`regex` module, not PCRE2), mapped to byte-level symbols and merged by BPE rank. Checked
against the transformers output in vectors/tokenizer_golden.json before it is trusted
(`check`), then compared with `zimage tokenize --prompts-file` on generated prompts by
test_tokenizer_diff.sh.

  tokenizer_ref.py prompts N SEED          N prompts (JSON lines): fixed hard cases, then
                                           random mixes of scripts, marks and whitespace
  tokenizer_ref.py encode TOKENIZER_JSON   JSON-line prompts on stdin -> templated ids,
                                           cut to 512 (one JSON array per line)
  tokenizer_ref.py check TOKENIZER_JSON GOLDEN_JSON
                                           exit 1 unless every golden case's ids match
Needs python3 and python3-regex (Debian).
"""
import json
import random
import sys
import unicodedata

MAX_LEN = 512
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


class Reference:
    def __init__(self, path):
        import regex  # python3-regex: \p{L}, \p{N} and the pattern's look-ahead

        with open(path, encoding="utf-8") as f:
            t = json.load(f)
        model = t["model"]
        assert model["type"] == "BPE", model["type"]
        self.vocab = model["vocab"]
        self.ranks = {}
        for i, m in enumerate(model["merges"]):
            pair = tuple(m) if isinstance(m, list) else tuple(m.split(" "))
            self.ranks.setdefault(pair, i)
        self.added = sorted(
            ((a["content"], a["id"]) for a in t["added_tokens"]), key=lambda a: -len(a[0])
        )
        pre = t["pre_tokenizer"]
        splits = [p for p in pre.get("pretokenizers", [pre]) if p["type"] == "Split"]
        self.pattern = regex.compile(splits[0]["pattern"]["Regex"])
        # GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to 256+.
        keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
        extra = [b for b in range(256) if b not in keep]
        self.sym = {b: chr(b) for b in keep}
        self.sym.update({b: chr(256 + i) for i, b in enumerate(extra)})
        self.cache = {}

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        parts = list(word)
        while len(parts) > 1:
            ranked = [
                (self.ranks[p], p) for p in zip(parts, parts[1:]) if p in self.ranks
            ]
            if not ranked:
                break
            best = min(ranked)[1]
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids, start, i = [], 0, 0
        segments = []
        while i < len(text):
            hit = next((a for a in self.added if text.startswith(a[0], i)), None)
            if hit:
                segments += [(text[start:i], None), (None, hit[1])]
                i += len(hit[0])
                start = i
            else:
                i += 1
        segments.append((text[start:], None))
        for s, special in segments:
            if special is not None:
                ids.append(special)
                continue
            for m in self.pattern.finditer(unicodedata.normalize("NFC", s)):
                word = "".join(self.sym[b] for b in m.group(0).encode("utf-8"))
                ids += self.bpe(word)
        return ids

    def encode_prompt(self, prompt):
        return self.encode(TEMPLATE.format(prompt))[:MAX_LEN]


HARD = [
    "A photo of an astronaut riding a horse on Mars, 4k, highly detailed",
    "一只可爱的小猫坐在窗台上，阳光洒在它的毛发上，高清摄影",
    "Портрет пожилого рыбака, масляная живопись",
    "桜の木の下で本を読む少女、水彩画",
    "서울의 밤거리, 네온사인, 비 오는 날",
    "مدينة عربية قديمة عند الغروب",
    "एक सुंदर पहाड़ी गाँव, सूर्योदय",
    "ภาพวาดช้างไทยในป่า",
    "Ελληνικός ναός στο φως του φεγγαριού",
    "שקיעה מעל הים התיכון",
    "Café déjà vu, naïve façade — crème brûlée",
    "e\u0301cole Cafe\u0301 A\u030a n\u0303 a\u0308\u0301",
    "Ǆ ǅ ǆ ﬁ ﬂ Ⅻ ① ²³ ½ Ω Ω K K Å Å",
    "I'M SURE IT'S THEY'LL WE'VE YOU'RE HE'D",
    "don't won't can't shouldn't've y'all 's 's'S ''s",
    "👨‍👩‍👧‍👦 family 🏳️‍🌈 flag 👍🏽 thumbs ❤️ 🇯🇵🇺🇸",
    "price: $1,234.56 (approx) — 50% off!!! #sale @store",
    "tab\there\r\nnew\r\rline\n\n\n  end   ",
    "   leading and trailing spaces   ",
    "\u00a0nbsp\u2003emsp\u3000ideographic\u200bzwsp\ufeffbom",
    "\u0085nel\u2028ls\u2029ps\u000bvt\u000cff\u001c\u001d\u001e",
    "\u0001ctl\u001f\u007fdel",
    "<|im_start|>system\nyou are<|im_end|>",
    "<|endoftext|><|vision_start|><tool_call>",
    "<|im_start|<|im_end|>>",
    "x" * 700,
    "🙂" * 600,
    "ab " * 700,
    "12345678901234567890 ٣٤٥ ๓๔๕ ३४५ ３４５",
    "ⓐⓑⓒ ＡＢＣ ａｂｃ ｶﾀｶﾅ 𝔉𝔯𝔞𝔨𝔱𝔲𝔯 𝕕𝕠𝕦𝕓𝕝𝕖",
    "mixed中文and English词语混合text",
    "C++ std::vector<int> v{1,2,3}; // comment",
    "path/to/file.png?x=1&y=2",
    "ﷺ ﷻ ﴾﴿ ؟",
    "Z̴̡̛a̶l̷g̸o̵ text",
    "",
]

POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\r\u00a0\u3000\u2003\u000b\u0085",
    ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
    "中文字词画图猫狗山水日月",
    "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
    "éèêëàâäôöûüçñåøæœßÉÈ",
    "\u0301\u0308\u0303\u030a\u0327",
    "😀🙂👍🏽🇯🇵❤️‍🔥",
    "'s'S'll'LL'd're've'M",
    "ぁあアカ한글ㄱ각",
    "\u0627\u0644\u0639\u0600",
    "\u200d\u200c\ufe0f",
]


def prompts(n, seed):
    rng = random.Random(seed)
    out = list(HARD[:n])
    while len(out) < n:
        if rng.random() < 0.8:
            k = rng.randint(1, 80)
            s = "".join(rng.choice(rng.choice(POOLS)) for _ in range(k))
        else:  # any scalar value but NUL and surrogates
            s = "".join(
                chr(rng.choice([rng.randint(1, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                for _ in range(rng.randint(1, 40))
            )
        out.append(s)
    return out


def main(argv):
    if len(argv) == 4 and argv[1] == "prompts":
        for p in prompts(int(argv[2]), int(argv[3])):
            print(json.dumps(p))
        return 0
    if len(argv) == 3 and argv[1] == "encode":
        ref = Reference(argv[2])
        for line in sys.stdin:
            print(json.dumps(ref.encode_prompt(json.loads(line))))
        return 0
    if len(argv) == 4 and argv[1] == "check":
        ref = Reference(argv[2])
        with open(argv[3], encoding="utf-8") as f:
            cases = json.load(f)["cases"]
        bad = [c["prompt"] for c in cases if ref.encode_prompt(c["prompt"]) != c["ids"]]
        for p in bad:
            print("reference differs from transformers on %r" % p[:60], file=sys.stderr)
        print("reference: %d of %d golden cases match" % (len(cases) - len(bad), len(cases)))
        return 1 if bad or not cases else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))

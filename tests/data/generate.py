"""Write the test text fixture: short encyclopedia-style English articles from a small seeded
grammar (valid.txt and test.txt, one row per line, WikiText-like headings and blank lines).

Run `python tests/data/generate.py` to regenerate; the output is deterministic, and a test
checks that the shipped files equal what this script writes.
"""

from __future__ import annotations

import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = {"valid": (1, 30), "test": (2, 30)}  # name: (seed, articles)

FIRST = ["Anna", "Thomas", "Maria", "John", "Elena", "Henry", "Clara", "Samuel", "Alice", "Peter",
         "Helen", "George", "Margaret", "William", "Edith", "Robert", "Julia", "Arthur", "Rosa", "Victor"]
LAST = ["Hartley", "Moreau", "Lindqvist", "Okafor", "Brennan", "Castell", "Whitfield", "Novak",
        "Ashdown", "Fairbairn", "Delacroix", "Pemberton", "Sandoval", "Thorne", "Kowalski", "Reyes"]
PLACES = ["Northbridge", "Eastmoor", "Kingsford", "Redhaven", "Ashford", "Millbrook", "Stonehill",
          "Westerly", "Greenvale", "Harrowgate", "Lakeside", "Oakmont", "Fernley", "Coldwater"]
REGIONS = ["the northern valley", "the coastal plain", "the upper river basin", "the eastern hills",
           "the old county", "the southern marshes", "the central plateau", "the western islands"]
THINGS = ["bridge", "railway", "cathedral", "harbour", "library", "museum", "canal", "observatory",
          "mill", "lighthouse", "theatre", "market", "school", "castle", "tower", "garden", "station"]
WORKS = ["novel", "symphony", "opera", "album", "poem", "painting", "film", "play", "essay", "song"]
FIELDS = ["astronomy", "botany", "chemistry", "geology", "history", "mathematics", "medicine",
          "music", "painting", "philosophy", "physics", "poetry", "architecture", "engineering"]
ADJ = ["large", "small", "ancient", "modern", "famous", "quiet", "busy", "narrow", "wide", "tall",
       "early", "late", "important", "popular", "difficult", "successful", "unusual", "remarkable",
       "local", "national", "public", "private", "northern", "southern", "simple", "complex"]
NOUN = ["town", "village", "city", "river", "road", "company", "society", "council", "army", "church",
        "family", "team", "club", "newspaper", "university", "government", "community", "industry",
        "population", "economy", "election", "season", "war", "treaty", "festival", "collection"]
VERB_PAST = ["built", "opened", "founded", "designed", "described", "restored", "expanded",
             "studied", "visited", "praised", "criticised", "published", "recorded", "completed",
             "replaced", "supported", "announced", "organised", "discovered", "established"]
VERB_INTR = ["grew", "declined", "recovered", "changed", "continued", "remained open", "moved",
             "closed", "flourished", "expanded rapidly"]
CONNECT = ["However", "In addition", "At the same time", "Later", "During this period",
           "As a result", "In the following years", "By contrast", "Shortly afterwards", "Meanwhile"]
SECTIONS = ["History", "Early life", "Career", "Description", "Design", "Reception", "Legacy",
            "Geography", "Economy", "Later years", "Construction", "Background"]


def person(r: random.Random) -> str:
    return f"{r.choice(FIRST)} {r.choice(LAST)}"


def year(r: random.Random) -> int:
    return r.randint(1650, 1990)


def sentence(r: random.Random, subject: str) -> str:
    y = year(r)
    kind = r.randrange(12)
    if kind == 0:
        s = f"The {r.choice(THINGS)} was {r.choice(VERB_PAST)} in {y} by {person(r)}"
    elif kind == 1:
        s = (f"In {y} , {subject} {r.choice(VERB_PAST)} a {r.choice(ADJ)} {r.choice(THINGS)} near "
             f"{r.choice(PLACES)}")
    elif kind == 2:
        s = (f"The {r.choice(NOUN)} of {r.choice(PLACES)} {r.choice(VERB_INTR)} after {y} , "
             f"when the {r.choice(ADJ)} {r.choice(NOUN)} was {r.choice(VERB_PAST)}")
    elif kind == 3:
        s = (f"{person(r)} wrote that {subject} was \" {r.choice(['one of the most', 'the most', 'a very'])} "
             f"{r.choice(ADJ)} {r.choice(NOUN)} of its time \"")
    elif kind == 4:
        n = r.randint(2, 900) * 10
        s = f"By {y} the {r.choice(NOUN)} had about {n:,} members , most of them from {r.choice(REGIONS)}"
    elif kind == 5:
        s = (f"{r.choice(CONNECT)} , the {r.choice(ADJ)} {r.choice(WORKS)} by {person(r)} was "
             f"{r.choice(VERB_PAST)} and {r.choice(VERB_PAST)} by critics")
    elif kind == 6:
        s = (f"{subject} is located in {r.choice(REGIONS)} , {r.randint(2, 95)} km from "
             f"{r.choice(PLACES)} , on the {r.choice(ADJ)} {r.choice(['road', 'river', 'railway'])} "
             f"to {r.choice(PLACES)}")
    elif kind == 7:
        s = (f"{person(r)} ( born {y} ) studied {r.choice(FIELDS)} and later taught "
             f"{r.choice(FIELDS)} at the university of {r.choice(PLACES)}")
    elif kind == 8:
        s = (f"The {r.choice(['first', 'second', 'third', 'last'])} {r.choice(THINGS)} was "
             f"{r.choice(VERB_PAST)} in {y} and {r.choice(VERB_PAST)} in {y + r.randint(1, 60)}")
    elif kind == 9:
        s = (f"{r.choice(CONNECT)} , {subject} {r.choice(VERB_INTR)} , and the {r.choice(NOUN)} "
             f"{r.choice(VERB_INTR)} as well")
    elif kind == 10:
        s = (f"According to {person(r)} , the {r.choice(ADJ)} {r.choice(NOUN)} of {y} was "
             f"{r.choice(['the result of', 'a response to', 'an example of'])} a {r.choice(ADJ)} "
             f"{r.choice(NOUN)}")
    else:
        s = (f"It has {r.randint(2, 40)} {r.choice(['rooms', 'arches', 'windows', 'floors', 'bells'])} "
             f"and a {r.choice(ADJ)} {r.choice(THINGS)} , {r.choice(VERB_PAST)} in {y}")
    return s[0].upper() + s[1:] + " ."


def article(r: random.Random) -> list[str]:
    kind = r.randrange(3)
    if kind == 0:
        title = f"{r.choice(PLACES)} {r.choice(THINGS).title()}"
    elif kind == 1:
        title = person(r)
    else:
        title = f"{r.choice(PLACES)} ( {r.choice(NOUN)} )"
    lines = ["", f" = {title} = ", ""]
    sections = r.sample(SECTIONS, r.randint(2, 4))
    for k in range(len(sections) + 1):
        if k:
            lines += ["", f" = = {sections[k - 1]} = = ", ""]
        for _ in range(r.randint(1, 3)):
            lines.append(" " + " ".join(sentence(r, title) for _ in range(r.randint(3, 7))) + " ")
    return lines


def generate(seed: int, articles: int) -> str:
    r = random.Random(seed)
    lines: list[str] = []
    for _ in range(articles):
        lines += article(r)
    return "\n".join(lines) + "\n"


def main() -> None:
    for name, (seed, n) in SPLITS.items():
        (HERE / f"{name}.txt").write_text(generate(seed, n), encoding="utf-8")


if __name__ == "__main__":
    main()

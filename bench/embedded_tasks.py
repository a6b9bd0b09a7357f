"""The task set of bench/embedded_agent.py: tiny repositories, each with a task, the tests the agent sees and
HIDDEN acceptance tests it never sees (added to a fresh copy after the job, with the job's patch applied).

Two sets written apart: TUNE (the five kinds the issue names; prompts and the harness were tried on these) and
HELD_OUT (written afterwards in other words and shapes: packages in folders, bug reports stated as facts, no
AGENTS.md; not looked at while tuning). Report both.
"""
from __future__ import annotations

from dataclasses import dataclass, field

UNITTEST = "python3 -m unittest -v"


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    task: str
    files: dict[str, str]
    hidden: dict[str, str]                      # acceptance test files, added after the job
    hidden_command: str = "python3 -m unittest discover -v -p 'test*.py'"
    one_file_fix: bool = True
    tags: tuple[str, ...] = field(default_factory=tuple)


def _agents(command: str = UNITTEST) -> str:
    return f"# Working here\n\nRun the tests with `{command}` from the repository root.\n"


TUNE = [
    Task("wrong-operator", "wrong operator with a failing test",
         "The test for add fails. Fix it.",
         {"calc.py": "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n",
          "test_calc.py": "import unittest\n\nfrom calc import add, mul\n\n\nclass CalcTest(unittest.TestCase):\n"
                          "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n"
                          "    def test_mul(self):\n        self.assertEqual(mul(2, 3), 6)\n",
          "AGENTS.md": _agents()},
         {"test_hidden_calc.py": "import unittest\n\nfrom calc import add, mul\n\n\nclass Hidden(unittest.TestCase):\n"
                                 "    def test_add_more(self):\n        self.assertEqual(add(-4, 10), 6)\n"
                                 "        self.assertEqual(add(0, 0), 0)\n\n"
                                 "    def test_mul_kept(self):\n        self.assertEqual(mul(4, 5), 20)\n"}),
    Task("typo-string", "typo in a string",
         "greet() says 'Helo' instead of 'Hello'. Fix the greeting.",
         {"greet.py": "def greet(name):\n    return f\"Helo, {name}!\"\n",
          "test_greet.py": "import unittest\n\nfrom greet import greet\n\n\nclass GreetTest(unittest.TestCase):\n"
                           "    def test_greet(self):\n        self.assertEqual(greet(\"Ada\"), \"Hello, Ada!\")\n",
          "AGENTS.md": _agents()},
         {"test_hidden_greet.py": "import unittest\n\nfrom greet import greet\n\n\nclass Hidden(unittest.TestCase):\n"
                                  "    def test_other_names(self):\n        self.assertEqual(greet(\"Bob\"), \"Hello, Bob!\")\n"
                                  "        self.assertEqual(greet(\"\"), \"Hello, !\")\n"}),
    Task("add-function", "add a function",
         "Add a function is_odd(n) to parity.py that returns True when the integer n is odd and False otherwise.",
         {"parity.py": "def is_even(n):\n    return n % 2 == 0\n",
          "test_parity.py": "import unittest\n\nfrom parity import is_even\n\n\nclass NumbersTest(unittest.TestCase):\n"
                             "    def test_is_even(self):\n        self.assertTrue(is_even(4))\n        self.assertFalse(is_even(3))\n",
          "AGENTS.md": _agents()},
         {"test_hidden_parity.py": "import unittest\n\nfrom parity import is_even, is_odd\n\n\n"
                                    "class Hidden(unittest.TestCase):\n"
                                    "    def test_is_odd(self):\n        self.assertTrue(is_odd(3))\n"
                                    "        self.assertFalse(is_odd(4))\n        self.assertTrue(is_odd(-7))\n"
                                    "        self.assertFalse(is_odd(0))\n\n"
                                    "    def test_is_even_kept(self):\n        self.assertTrue(is_even(10))\n"},
         tags=("no failing test",)),
    Task("missing-lower", "a missing lower-case",
         "slugify should produce lower-case slugs; the test shows the problem.",
         {"slug.py": "def slugify(text):\n    words = text.strip().split()\n    return \"-\".join(words)\n",
          "test_slug.py": "import unittest\n\nfrom slug import slugify\n\n\nclass SlugTest(unittest.TestCase):\n"
                          "    def test_slugify(self):\n        self.assertEqual(slugify(\"Hello World\"), \"hello-world\")\n",
          "AGENTS.md": _agents()},
         {"test_hidden_slug.py": "import unittest\n\nfrom slug import slugify\n\n\nclass Hidden(unittest.TestCase):\n"
                                 "    def test_more(self):\n        self.assertEqual(slugify(\"  Big CAT  \"), \"big-cat\")\n"
                                 "        self.assertEqual(slugify(\"a b c\"), \"a-b-c\")\n"}),
    Task("off-by-one", "an off-by-one",
         "first_n(items, n) should return the first n items, but the test fails. Fix it.",
         {"listing.py": "def first_n(items, n):\n    \"\"\"The first n items of the list.\"\"\"\n    return items[:n - 1]\n",
          "test_listing.py": "import unittest\n\nfrom listing import first_n\n\n\nclass ListingTest(unittest.TestCase):\n"
                             "    def test_first_two(self):\n        self.assertEqual(first_n([1, 2, 3], 2), [1, 2])\n",
          "AGENTS.md": _agents()},
         {"test_hidden_listing.py": "import unittest\n\nfrom listing import first_n\n\n\nclass Hidden(unittest.TestCase):\n"
                                    "    def test_more(self):\n        self.assertEqual(first_n([5, 6, 7], 3), [5, 6, 7])\n"
                                    "        self.assertEqual(first_n([5, 6, 7], 0), [])\n"
                                    "        self.assertEqual(first_n([5], 1), [5])\n"}),
]

HELD_OUT = [
    Task("adult-boundary", "wrong comparison in a package",
         "People who are exactly 18 are treated as minors by can_vote. That's a bug.",
         {"voting/__init__.py": "",
          "voting/rules.py": "ADULT_AGE = 18\n\n\ndef can_vote(age):\n    return age > ADULT_AGE\n",
          "tests/__init__.py": "",
          "tests/test_rules.py": "import unittest\n\nfrom voting.rules import can_vote\n\n\nclass RulesTest(unittest.TestCase):\n"
                                 "    def test_eighteen_can_vote(self):\n        self.assertTrue(can_vote(18))\n\n"
                                 "    def test_child_cannot(self):\n        self.assertFalse(can_vote(12))\n"},
         {"test_hidden_voting.py": "import unittest\n\nfrom voting.rules import can_vote\n\n\nclass Hidden(unittest.TestCase):\n"
                                   "    def test_boundaries(self):\n        self.assertFalse(can_vote(17))\n"
                                   "        self.assertTrue(can_vote(18))\n        self.assertTrue(can_vote(40))\n"}),
    Task("fahrenheit-constant", "wrong constant",
         "to_fahrenheit(100) returns 203 but water boils at 212 F.",
         {"temperature.py": "def to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 23\n\n\n"
                            "def to_celsius(fahrenheit):\n    return (fahrenheit - 32) * 5 / 9\n",
          "test_temperature.py": "import unittest\n\nfrom temperature import to_celsius, to_fahrenheit\n\n\n"
                                 "class TemperatureTest(unittest.TestCase):\n"
                                 "    def test_boiling(self):\n        self.assertEqual(to_fahrenheit(100), 212)\n\n"
                                 "    def test_back(self):\n        self.assertEqual(to_celsius(212), 100)\n"},
         {"test_hidden_temperature.py": "import unittest\n\nfrom temperature import to_celsius, to_fahrenheit\n\n\n"
                                        "class Hidden(unittest.TestCase):\n"
                                        "    def test_freezing(self):\n        self.assertEqual(to_fahrenheit(0), 32)\n"
                                        "        self.assertEqual(to_fahrenheit(-40), -40)\n"
                                        "        self.assertEqual(to_celsius(32), 0)\n"}),
    Task("stack-peek", "add a method",
         "Our Stack class needs a peek() method that returns the top item without removing it.",
         {"stack.py": "class Stack:\n    def __init__(self):\n        self._items = []\n\n"
                      "    def push(self, item):\n        self._items.append(item)\n\n"
                      "    def pop(self):\n        return self._items.pop()\n\n"
                      "    def __len__(self):\n        return len(self._items)\n",
          "test_stack.py": "import unittest\n\nfrom stack import Stack\n\n\nclass StackTest(unittest.TestCase):\n"
                           "    def test_push_pop(self):\n        s = Stack()\n        s.push(1)\n        s.push(2)\n"
                           "        self.assertEqual(s.pop(), 2)\n        self.assertEqual(len(s), 1)\n"},
         {"test_hidden_stack.py": "import unittest\n\nfrom stack import Stack\n\n\nclass Hidden(unittest.TestCase):\n"
                                  "    def test_peek(self):\n        s = Stack()\n        s.push('a')\n        s.push('b')\n"
                                  "        self.assertEqual(s.peek(), 'b')\n        self.assertEqual(len(s), 2)\n"
                                  "        self.assertEqual(s.pop(), 'b')\n        self.assertEqual(s.peek(), 'a')\n"},
         tags=("no failing test",)),
    Task("csv-spaces", "missing strip",
         "parse_line('a, b ,c') gives ['a', ' b ', 'c'] - the spaces around fields should be removed.",
         {"csvline.py": "def parse_line(line, sep=\",\"):\n    \"\"\"Split one line of comma separated values.\"\"\"\n"
                        "    return [field for field in line.split(sep)]\n",
          "test_csvline.py": "import unittest\n\nfrom csvline import parse_line\n\n\nclass CsvTest(unittest.TestCase):\n"
                             "    def test_spaces(self):\n        self.assertEqual(parse_line(\"a, b ,c\"), [\"a\", \"b\", \"c\"])\n",
          "AGENTS.md": _agents()},
         {"test_hidden_csvline.py": "import unittest\n\nfrom csvline import parse_line\n\n\nclass Hidden(unittest.TestCase):\n"
                                    "    def test_more(self):\n        self.assertEqual(parse_line(\" x ;y \", sep=\";\"), [\"x\", \"y\"])\n"
                                    "        self.assertEqual(parse_line(\"one\"), [\"one\"])\n"}),
    Task("sum-inclusive", "off-by-one in a range",
         "sum_to(n) is supposed to add 1 + 2 + ... + n, but sum_to(3) is 3 instead of 6.",
         {"mathutil/__init__.py": "",
          "mathutil/series.py": "def sum_to(n):\n    total = 0\n    for i in range(1, n):\n        total += i\n    return total\n",
          "test_series.py": "import unittest\n\nfrom mathutil.series import sum_to\n\n\nclass SeriesTest(unittest.TestCase):\n"
                            "    def test_three(self):\n        self.assertEqual(sum_to(3), 6)\n"},
         {"test_hidden_series.py": "import unittest\n\nfrom mathutil.series import sum_to\n\n\nclass Hidden(unittest.TestCase):\n"
                                   "    def test_more(self):\n        self.assertEqual(sum_to(1), 1)\n"
                                   "        self.assertEqual(sum_to(10), 55)\n        self.assertEqual(sum_to(0), 0)\n"}),
]

SETS = {"tune": TUNE, "held-out": HELD_OUT}

"""The built-in offline tool set of the `tool_calls` recipe (docs/tool-calls.md).

Every public function is a tool: smolforge derives its JSON schema from the type
hints and the Google-style docstring by parsing this file, and runs it only inside
the code sandbox (standard library only, no network). The small SQLite database is
created in memory, with seeded rows, when the file loads.
"""

import datetime
import sqlite3
from typing import Literal

_LENGTH_M = {"mm": 0.001, "cm": 0.01, "m": 1.0, "km": 1000.0, "in": 0.0254, "ft": 0.3048, "mi": 1609.344}
_MASS_KG = {"g": 0.001, "kg": 1.0, "lb": 0.45359237, "oz": 0.028349523125}

_DB = sqlite3.connect(":memory:")
_DB.executescript("""
CREATE TABLE countries (name TEXT PRIMARY KEY, capital TEXT, continent TEXT, population_m REAL);
INSERT INTO countries VALUES
  ('France', 'Paris', 'Europe', 68.2), ('Japan', 'Tokyo', 'Asia', 124.5),
  ('Kenya', 'Nairobi', 'Africa', 55.1), ('Brazil', 'Brasilia', 'South America', 203.1),
  ('Canada', 'Ottawa', 'North America', 40.1), ('Australia', 'Canberra', 'Oceania', 26.6),
  ('India', 'New Delhi', 'Asia', 1428.6), ('Germany', 'Berlin', 'Europe', 84.5);
CREATE TABLE elements (symbol TEXT PRIMARY KEY, name TEXT, number INTEGER, mass REAL);
INSERT INTO elements VALUES
  ('H', 'Hydrogen', 1, 1.008), ('He', 'Helium', 2, 4.0026), ('C', 'Carbon', 6, 12.011),
  ('N', 'Nitrogen', 7, 14.007), ('O', 'Oxygen', 8, 15.999), ('Fe', 'Iron', 26, 55.845),
  ('Au', 'Gold', 79, 196.97);
""")


def convert_length(value: float, from_unit: Literal["mm", "cm", "m", "km", "in", "ft", "mi"],
                   to_unit: Literal["mm", "cm", "m", "km", "in", "ft", "mi"]) -> float:
    """Convert a length from one unit to another.

    Args:
        value: The length to convert.
        from_unit: The unit of the given length.
        to_unit: The unit to convert to.
    """
    return round(value * _LENGTH_M[from_unit] / _LENGTH_M[to_unit], 6)


def convert_mass(value: float, from_unit: Literal["g", "kg", "lb", "oz"], to_unit: Literal["g", "kg", "lb", "oz"]) -> float:
    """Convert a mass (weight) from one unit to another.

    Args:
        value: The mass to convert.
        from_unit: The unit of the given mass.
        to_unit: The unit to convert to.
    """
    return round(value * _MASS_KG[from_unit] / _MASS_KG[to_unit], 6)


def convert_temperature(value: float, from_unit: Literal["C", "F", "K"], to_unit: Literal["C", "F", "K"]) -> float:
    """Convert a temperature between Celsius (C), Fahrenheit (F) and Kelvin (K).

    Args:
        value: The temperature to convert.
        from_unit: The scale of the given temperature.
        to_unit: The scale to convert to.
    """
    c = {"C": value, "F": (value - 32) * 5 / 9, "K": value - 273.15}[from_unit]
    return round({"C": c, "F": c * 9 / 5 + 32, "K": c + 273.15}[to_unit], 4)


def days_between(start: str, end: str) -> int:
    """Count the days from one date to another (negative if end is earlier).

    Args:
        start: The first date, as YYYY-MM-DD.
        end: The second date, as YYYY-MM-DD.
    """
    return (datetime.date.fromisoformat(end) - datetime.date.fromisoformat(start)).days


def add_days(date: str, days: int) -> str:
    """Add a number of days to a date (subtract with a negative number).

    Args:
        date: The date, as YYYY-MM-DD.
        days: How many days to add.
    """
    return (datetime.date.fromisoformat(date) + datetime.timedelta(days=days)).isoformat()


def weekday(date: str) -> str:
    """The day of the week a date falls on.

    Args:
        date: The date, as YYYY-MM-DD.
    """
    return datetime.date.fromisoformat(date).strftime("%A")


def calculate(operation: Literal["add", "subtract", "multiply", "divide", "power"], a: float, b: float) -> float:
    """Apply an arithmetic operation to two numbers.

    Args:
        operation: The operation to apply.
        a: The first number.
        b: The second number.
    """
    if operation == "divide" and b == 0:
        raise ValueError("division by zero")
    ops = {"add": a + b, "subtract": a - b, "multiply": a * b, "divide": a / b if b else 0.0,
           "power": a ** b if abs(b) <= 64 else float("nan")}
    return ops[operation]


def word_count(text: str) -> int:
    """Count the words in a text.

    Args:
        text: The text to count the words of.
    """
    return len(text.split())


def change_case(text: str, case: Literal["upper", "lower", "title"]) -> str:
    """Change the letter case of a text.

    Args:
        text: The text to change.
        case: The case to convert to.
    """
    return {"upper": text.upper(), "lower": text.lower(), "title": text.title()}[case]


def country_info(name: str) -> dict:
    """Look up a country's capital, continent and population (millions) in the database.

    Args:
        name: The country's name in English, e.g. France.
    """
    row = _DB.execute("SELECT name, capital, continent, population_m FROM countries WHERE lower(name) = lower(?)",
                      (name.strip(),)).fetchone()
    if row is None:
        raise KeyError(f"no country named {name!r} in the database")
    return dict(zip(("name", "capital", "continent", "population_millions"), row))


def countries_in(continent: Literal["Africa", "Asia", "Europe", "North America", "Oceania", "South America"]
                 ) -> list[str]:
    """List the countries of a continent that the database knows.

    Args:
        continent: The continent.
    """
    return [r[0] for r in _DB.execute("SELECT name FROM countries WHERE continent = ? ORDER BY name", (continent,))]


def element_info(symbol: str) -> dict:
    """Look up a chemical element by its symbol: its name, atomic number and atomic mass.

    Args:
        symbol: The element's symbol, e.g. Fe.
    """
    row = _DB.execute("SELECT symbol, name, number, mass FROM elements WHERE symbol = ?", (symbol.strip(),)).fetchone()
    if row is None:
        raise KeyError(f"no element with symbol {symbol!r} in the database")
    return dict(zip(("symbol", "name", "atomic_number", "atomic_mass"), row))

"""TEST ONLY: two tools written as TRL users write them — typed functions with Google-style
docstrings — whose schemas, results and errors the runtime tests check."""

from typing import Optional

from galley_sdk import tool


@tool
def multiply(a: int, b: int) -> int:
    """Multiplies two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


@tool
def lookup(city: str, units: Optional[str] = None) -> dict:
    """Looks up the weather of a city.

    Args:
        city: The city's name.
        units: `metric` or `imperial`.
    """
    if city == "Atlantis":
        raise ValueError("no such city")
    return {"city": city, "temperature": 21, "units": units or "metric"}

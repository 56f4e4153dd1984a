"""Plain-text tables for the terminal: ``flask stats`` reports and ``flask stats explain`` plans."""


def table(header: list, rows: list, right: frozenset = frozenset(), notes: list = ()) -> list:
    """Return the lines of a table: columns as wide as their widest cell, those whose index
    is in ``right`` aligned right, and ``notes[i]`` (if any) appended to row ``i``."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        line = "  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        note = notes[n - 1] if 0 < n <= len(notes) else ""
        lines.append((line + (f"  {note}" if note else "")).rstrip())
    return lines

class Stack:
    """A last-in, first-out stack: two method bodies are left for the model."""

    def __init__(self) -> None:
        self._items: list[object] = []

    def push(self, item: object) -> None:
        self._items.append(item)

    def pop(self) -> object:
        """Remove and return the top item; raise IndexError when empty."""
        pass

    def peek(self) -> object:
        """Return the top item without removing it."""
        ...

    def __len__(self) -> int:
        return len(self._items)

"""Modal dialogs: each a ModalScreen[T] that answers through dismiss()."""

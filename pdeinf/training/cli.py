"""Placeholder registered by pdeinf.cli; replaced by the module's owner."""


def add_parser(subparsers):
    name = "train"
    parser = subparsers.add_parser(name, help="(not yet available)")
    parser.set_defaults(func=lambda args: (_ for _ in ()).throw(NotImplementedError(name)))
    return parser

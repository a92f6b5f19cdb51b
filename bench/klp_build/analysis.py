"""Which tool is right where the two disagree: written by hand after reading the kernel's
code and the loaded result, keyed by bench patch; ``report.py`` puts each under its patch's
disagreement.  A disagreement without an entry is reported as not analysed."""

ANALYSIS = {
}

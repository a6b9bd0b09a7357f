class A:
    def __init__(self):
        self.n = 0

class B:
    def __init__(self):
        self.n = 0

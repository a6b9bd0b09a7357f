class A:
    def setup(self):
        self.x = 0

    def run(self):
        self.x = 0

class B:
    def setup(self):
        self.x = 0

    def run(self):
        self.x = 1

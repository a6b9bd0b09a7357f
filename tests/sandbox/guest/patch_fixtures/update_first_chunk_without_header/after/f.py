import foo
import bar
x = 1

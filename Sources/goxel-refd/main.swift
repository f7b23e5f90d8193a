import CJansson
print("refd")

# cmake -DIN=guest.bin -DOUT=guest_image.c -P embed_guest.cmake: the flat guest
# image as a C array (contents in the source, so compiler caches see changes).
file(READ ${IN} hex HEX)
string(LENGTH "${hex}" n)
math(EXPR bytes "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
string(REGEX REPLACE "((0x..,){16})" "\\1\n" body "${body}")
file(WRITE ${OUT} "/* generated from ${IN} */\nconst unsigned char minivmm_guest_image[] __attribute__((aligned(16))) = {\n${body}\n};\nconst unsigned long minivmm_guest_image_size = ${bytes};\n")

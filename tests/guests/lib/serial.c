/* COM1 16550 output, polled. */
#include "probe.h"

#define COM1 0x3F8
#define UART_THR 0
#define UART_IER 1
#define UART_FCR 2
#define UART_LCR 3
#define UART_MCR 4
#define UART_LSR 5
#define UART_DLL 0
#define UART_DLM 1
#define UART_IIR 2
#define LSR_THRE 0x20

/* Bytes we may still write before polling LSR again: THRE means the transmit
 * FIFO is empty, and a 16550A's FIFO takes 16 bytes (Linux's tx_loadsz). Every
 * port access is a VM exit, so this halves the cost of console output. */
static uint32_t g_tx_burst = 1, g_tx_room;

void serial_init(void)
{
	outb(COM1 + UART_IER, 0x00);   /* no interrupts */
	outb(COM1 + UART_LCR, 0x80);   /* DLAB */
	outb(COM1 + UART_DLL, 0x01);   /* 115200 baud */
	outb(COM1 + UART_DLM, 0x00);
	outb(COM1 + UART_LCR, 0x03);   /* 8N1 */
	outb(COM1 + UART_FCR, 0x07);   /* FIFO on, cleared */
	outb(COM1 + UART_MCR, 0x03);   /* DTR, RTS */
	/* IIR bits 7:6 = 11: FIFOs enabled (16550A) */
	g_tx_burst = (inb(COM1 + UART_IIR) & 0xC0) == 0xC0 ? 16 : 1;
	g_tx_room = 0;
}

void serial_putc(char c)
{
	if (g_tx_room == 0) {
		/* Bounded: a missing UART reads 0xFF (THRE set); a stuck one must not hang us. */
		for (uint32_t i = 0; i < 100000; i++)
			if (inb(COM1 + UART_LSR) & LSR_THRE)
				break;
		g_tx_room = g_tx_burst;
	}
	g_tx_room--;
	outb(COM1 + UART_THR, (uint8_t)c);
}

void serial_write(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		serial_putc(s[i]);
}
